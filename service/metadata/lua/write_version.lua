-- #include put_version.lua
-- One version of one path (see put_version.lua for the reply).
-- KEYS: 1 files zset, 2 head hash, 3 versions hash, 4 events stream, 5 chunk index, 6 stats hash,
--       7 timeline zset (kept current once a forget created it)
-- ARGV: the argument list a of put_version, with 4 the commit time in ms ('' = server clock)
--       instead of the expected head (unchecked here)
local k = {files = KEYS[1], head = KEYS[2], versions = KEYS[3], events = KEYS[4], chunks = KEYS[5],
  stats = KEYS[6], timeline = KEYS[7]}
local a = {ARGV[1], ARGV[2], ARGV[3], '', ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]}
return put_version(k, a, commit_time(ARGV[4]))
