-- KEYS: 1 location bucket; ARGV: field, old entry, new entry (repeated)
-- Points each field at its new entry only if it still holds the old one (a repair or another
-- repack that moved it meanwhile wins). Returns, per triple, 1 if switched, else 0.
local out = {}
for i = 1, #ARGV, 3 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
