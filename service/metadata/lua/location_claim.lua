-- KEYS: 1 location bucket, 2 its condemned bucket; ARGV: fields (digest bytes after the bucket's)
-- A writer relying on stored records (a chunk it did not write because it is indexed, or a delta
-- base) takes them off the condemned bucket before it names them anywhere. Returns, per field,
-- 1 if it is indexed, else 0 (a collection removed it: the writer must not rely on it).
local out = {}
for i = 1, #ARGV do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then out[i] = 1 else out[i] = 0 end
end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HDEL', KEYS[2], unpack(ARGV)) end
return out
