-- #include put_version.lua
-- A group of versions of distinct paths of one namespace in one call (CommitFiles): each file
-- succeeds or fails on its own, with the reply put_version gives it; the replies come in order.
-- One script keeps the whole group to one round trip, and Redis/Valkey makes it durable with
-- one AOF write.
-- KEYS: 1 files zset, 2 events stream, 3 chunk index, 4 stats hash, then per file: head hash,
--       versions hash, timeline zset
-- ARGV: 1 commit time in ms ('' = server clock), then per file the 10 arguments of put_version
local now = commit_time(ARGV[1])
local replies = {}
local n = (#KEYS - 4) / 3
for i = 1, n do
  local k = {files = KEYS[1], events = KEYS[2], chunks = KEYS[3], stats = KEYS[4],
    head = KEYS[2 + 3 * i], versions = KEYS[3 + 3 * i], timeline = KEYS[4 + 3 * i]}
  local o = 1 + (i - 1) * 10
  local a = {}
  for j = 1, 10 do a[j] = ARGV[o + j] end
  replies[i] = put_version(k, a, now)
end
return replies
