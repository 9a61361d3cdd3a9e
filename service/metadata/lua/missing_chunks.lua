-- #include find_missing.lua
-- KEYS: 1 chunk index; ARGV: 1 concatenated 32-byte digests. Returns the absent ones, concatenated:
-- a reply of only the missing digests is far cheaper to parse than one HMGET value per digest.
return find_missing(KEYS[1], ARGV[1])
