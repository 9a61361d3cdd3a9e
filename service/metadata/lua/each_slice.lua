-- Calls fn(batch, start) for each slice of up to 2048 digests of the concatenated 32-byte string d,
-- where start is the slice's offset (0-based): commands taking many fields stay bounded.
local function digest_slices(d, fn)
  local n = #d / 32
  local i = 0
  while i < n do
    local m = math.min(n - i, 2048)
    local batch = {}
    for j = 1, m do
      local o = (i + j - 1) * 32
      batch[j] = string.sub(d, o + 1, o + 32)
    end
    fn(batch, i)
    i = i + m
  end
end

-- Calls fn(batch, start, got) for each slice of d, where got is HMGET of that slice on hash key.
local function each_slice(key, d, fn)
  digest_slices(d, function(batch, i) fn(batch, i, redis.call('HMGET', key, unpack(batch))) end)
end
