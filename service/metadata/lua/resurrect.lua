-- Takes every digest of the concatenated 32-byte string d off the condemned hash key (garbage
-- collection, service/gc.py): a chunk that a writer asks about, uploads or commits is never swept
-- by the collection that condemned it. Without a collection in progress the key does not exist and
-- this costs one EXISTS.
local function resurrect(key, d)
  if redis.call('EXISTS', key) == 0 then return end
  local n = #d / 32
  local i = 0
  while i < n do
    local m = math.min(n - i, 2048)
    local batch = {}
    for j = 1, m do
      local o = (i + j - 1) * 32
      batch[j] = string.sub(d, o + 1, o + 32)
    end
    redis.call('HDEL', key, unpack(batch))
    i = i + m
  end
end
