-- KEYS: 1 head hash, 2 versions hash; ARGV: 1 limit (0 = all). Newest first.
local n = tonumber(redis.call('HGET', KEYS[1], 'version')) or 0
local limit = tonumber(ARGV[1])
local last = 1
if limit > 0 and n - limit + 1 > 1 then last = n - limit + 1 end
local out = {}
local v = n
while v >= last do
  local stop = math.max(last, v - 511)
  local fields = {}
  for k = v, stop, -1 do fields[#fields + 1] = string.format('%d', k) end
  local got = redis.call('HMGET', KEYS[2], unpack(fields))
  for j = 1, #got do out[#out + 1] = got[j] end
  v = stop - 1
end
return out
