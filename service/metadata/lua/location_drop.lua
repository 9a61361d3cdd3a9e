-- KEYS: 1 location bucket, 2 its condemned bucket; ARGV: 1 epoch, 2.. fields
-- Removes the index entry of each field still condemned by this epoch (no writer claimed it since).
-- Returns, per field, the removed entry or false.
local out = {}
for i = 2, #ARGV do
  out[i - 1] = false
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[1] then
    redis.call('HDEL', KEYS[2], ARGV[i])
    local entry = redis.call('HGET', KEYS[1], ARGV[i])
    if entry then
      redis.call('HDEL', KEYS[1], ARGV[i])
      out[i - 1] = entry
    end
  end
end
return out
