-- #include each_slice.lua
-- Takes every digest of the concatenated 32-byte string d off the condemned hash key (garbage
-- collection, service/gc.py): a chunk that a writer asks about, uploads or commits is never swept
-- by the collection that condemned it. Without a collection in progress the key does not exist and
-- this costs one EXISTS.
local function resurrect(key, d)
  if redis.call('EXISTS', key) == 0 then return end
  digest_slices(d, function(batch) redis.call('HDEL', key, unpack(batch)) end)
end
