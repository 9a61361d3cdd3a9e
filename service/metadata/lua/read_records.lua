-- #include timeline.lua
-- KEYS: (head hash, versions hash, timeline zset) triples, one per path
-- ARGV: 1 as_of_ms ('' = the head)
-- Returns one record (or false) per path: the head, or the newest remaining version with
-- created_ms <= as_of (through the timeline when a forget left gaps, else a binary search).
local asof = nil
if ARGV[1] ~= '' then asof = tonumber(ARGV[1]) end
local out = {}
for i = 1, #KEYS, 3 do
  local h = redis.call('HMGET', KEYS[i], 'version', 'created_ms')
  local rec = false
  if h[1] then
    if asof == nil or tonumber(h[2]) <= asof then
      rec = redis.call('HGET', KEYS[i + 1], h[1])
    elseif redis.call('EXISTS', KEYS[i + 2]) == 1 then
      local found = redis.call('ZREVRANGEBYSCORE', KEYS[i + 2], ARGV[1], '-inf', 'LIMIT', 0, 1)
      if found[1] then rec = redis.call('HGET', KEYS[i + 1], string.format('%d', tonumber(found[1]))) end
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
