-- KEYS: 1 head hash, 2 versions hash, 3 timeline zset; ARGV: 1 limit (0 = all). Newest first.
-- With a timeline (gaps left by a forget) the remaining versions are read from it.
local limit = tonumber(ARGV[1])
local numbers = {}
if redis.call('EXISTS', KEYS[3]) == 1 then
  local stop = -1
  if limit > 0 then stop = limit - 1 end
  for _, m in ipairs(redis.call('ZREVRANGE', KEYS[3], 0, stop)) do
    numbers[#numbers + 1] = string.format('%d', tonumber(m))
  end
else
  local n = tonumber(redis.call('HGET', KEYS[1], 'version')) or 0
  local last = 1
  if limit > 0 and n - limit + 1 > 1 then last = n - limit + 1 end
  for k = n, last, -1 do numbers[#numbers + 1] = string.format('%d', k) end
end
local out = {}
local i = 1
while i <= #numbers do
  local fields = {}
  for k = i, math.min(#numbers, i + 511) do fields[#fields + 1] = numbers[k] end
  local got = redis.call('HMGET', KEYS[2], unpack(fields))
  for j = 1, #got do out[#out + 1] = got[j] end
  i = i + #fields
end
return out
