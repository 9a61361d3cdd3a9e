-- #include each_slice.lua
-- #include resurrect.lua
-- KEYS: 1 chunk index, 2 stats hash, 3 (optional) the chunk index's condemned hash
-- ARGV: 1 concatenated 32-byte digests (no duplicates), 2 their lengths, comma-separated
-- One HMGET and one HSET per slice: a single HSET of many fields is also one AOF entry, where
-- one HSETNX per digest would be 200k entries for a 200k-chunk upload.
local lengths = {}
for len in string.gmatch(ARGV[2], '%d+') do lengths[#lengths + 1] = len end
local added = 0
local bytes = 0
each_slice(KEYS[1], ARGV[1], function(batch, start, got)
  local new = {}
  for j = 1, #batch do
    if not got[j] then
      new[#new + 1] = batch[j]
      new[#new + 1] = lengths[start + j]
      bytes = bytes + tonumber(lengths[start + j])
    end
  end
  if #new > 0 then
    redis.call('HSET', KEYS[1], unpack(new))
    added = added + #new / 2
  end
end)
if KEYS[3] then resurrect(KEYS[3], ARGV[1]) end
if bytes > 0 then redis.call('HINCRBY', KEYS[2], 'unique_bytes', string.format('%d', bytes)) end
return added
