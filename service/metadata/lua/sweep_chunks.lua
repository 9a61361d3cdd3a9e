-- KEYS: 1 chunk index, 2 stats hash, 3 condemned hash; ARGV: 1 concatenated 32-byte digests, 2 epoch
-- Drops from the chunk index each digest still condemned by this epoch (no writer asked about,
-- uploaded or committed it since it was condemned), and its condemned mark. One script, so a
-- concurrent commit either ran before (and resurrected the chunk) or runs after (and finds it
-- missing: the client uploads it again). Returns the dropped digests, concatenated.
local d = ARGV[1]
local swept = {}
local bytes = 0
for i = 0, #d / 32 - 1 do
  local dg = string.sub(d, i * 32 + 1, i * 32 + 32)
  if redis.call('HGET', KEYS[3], dg) == ARGV[2] then
    redis.call('HDEL', KEYS[3], dg)
    local len = redis.call('HGET', KEYS[1], dg)
    if len then
      redis.call('HDEL', KEYS[1], dg)
      bytes = bytes + tonumber(len)
      swept[#swept + 1] = dg
    end
  end
end
if bytes > 0 then redis.call('HINCRBY', KEYS[2], 'unique_bytes', string.format('%d', -bytes)) end
return table.concat(swept)
