-- Calls fn(batch, start, got) for each slice of up to 2048 digests of the concatenated 32-byte
-- string d, where got is HMGET of that slice on hash key and start the slice's offset (0-based).
local function each_slice(key, d, fn)
  local n = #d / 32
  local i = 0
  while i < n do
    local m = math.min(n - i, 2048)
    local batch = {}
    for j = 1, m do
      local o = (i + j - 1) * 32
      batch[j] = string.sub(d, o + 1, o + 32)
    end
    fn(batch, i, redis.call('HMGET', key, unpack(batch)))
    i = i + m
  end
end
