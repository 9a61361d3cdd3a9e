-- KEYS: 1 chunk index, 2 stats hash; ARGV: 1 concatenated 32-byte digests
local d = ARGV[1]
local removed = 0
local bytes = 0
for i = 0, #d / 32 - 1 do
  local dg = string.sub(d, i * 32 + 1, i * 32 + 32)
  local len = redis.call('HGET', KEYS[1], dg)
  if len then
    redis.call('HDEL', KEYS[1], dg)
    removed = removed + 1
    bytes = bytes + tonumber(len)
  end
end
if bytes > 0 then redis.call('HINCRBY', KEYS[2], 'unique_bytes', string.format('%d', -bytes)) end
return removed
