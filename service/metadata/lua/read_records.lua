-- KEYS: (head hash, versions hash) pairs, one per path
-- ARGV: 1 as_of_ms ('' = the head)
-- Returns one record (or false) per path: the head, or the newest version with created_ms <= as_of.
local asof = nil
if ARGV[1] ~= '' then asof = tonumber(ARGV[1]) end
local out = {}
for i = 1, #KEYS, 2 do
  local h = redis.call('HMGET', KEYS[i], 'version', 'created_ms')
  local rec = false
  if h[1] then
    if asof == nil or tonumber(h[2]) <= asof then
      rec = redis.call('HGET', KEYS[i + 1], h[1])
    else
      local lo, hi = 1, tonumber(h[1]) - 1
      while lo <= hi do
        local mid = math.floor((lo + hi) / 2)
        local r = redis.call('HGET', KEYS[i + 1], string.format('%d', mid))
        if tonumber(string.match(r, '^{"version":%d+,"created_ms":(%d+)')) <= asof then
          rec = r
          lo = mid + 1
        else
          hi = mid - 1
        end
      end
    end
  end
  out[#out + 1] = rec
end
return out
