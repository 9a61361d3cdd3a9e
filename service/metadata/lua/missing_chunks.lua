-- #include find_missing.lua
-- #include resurrect.lua
-- KEYS: 1 chunk index, 2 (optional) its condemned hash; ARGV: 1 concatenated 32-byte digests. Returns the absent ones, concatenated:
-- a reply of only the missing digests is far cheaper to parse than one HMGET value per digest.
if KEYS[2] then resurrect(KEYS[2], ARGV[1]) end
return find_missing(KEYS[1], ARGV[1])
