-- #include timeline.lua
-- KEYS: 1 head hash, 2 versions hash, 3 timeline zset, 4 events stream, 5 stats hash
-- ARGV: 1 path, 2 the head version the plan was made for, 3 identity,
--       then (version, size, manifest digest hex) triples of the versions to remove
-- Removes the versions in one step, or nothing: {'moved', head} when the head is no longer the
-- one planned for (a commit or delete came in; plan again). The head itself is never removed.
-- A version already gone is skipped. For each removal: the record, its timeline entry, the
-- version and logical-byte counters, and a 'forgotten' change-feed event. The timeline is built
-- from the remaining records on the path's first forget.
-- Returns {'ok', {version, event id, ...}, time_ms} for the versions removed by this call.
local cur = redis.call('HGET', KEYS[1], 'version')
if cur ~= ARGV[2] then
  return {'moved', tonumber(cur) or 0}
end
if redis.call('EXISTS', KEYS[3]) == 0 then
  local all = redis.call('HGETALL', KEYS[2])
  for i = 1, #all, 2 do
    local ts = string.match(all[i + 1], '^{"version":%d+,"created_ms":(%d+)')
    redis.call('ZADD', KEYS[3], ts, timeline_member(all[i]))
  end
end
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local removed = {}
local bytes = 0
for i = 4, #ARGV, 3 do
  local v = ARGV[i]
  if v ~= cur and redis.call('HDEL', KEYS[2], v) == 1 then
    redis.call('ZREM', KEYS[3], timeline_member(v))
    bytes = bytes + tonumber(ARGV[i + 1])
    local id = redis.call('XADD', KEYS[4], '*', 'kind', 'forgotten', 'path', ARGV[1], 'version', v,
      'size', ARGV[i + 1], 'time_ms', now, 'identity', ARGV[3], 'manifest', ARGV[i + 2])
    removed[#removed + 1] = v
    removed[#removed + 1] = id
  end
end
if #removed > 0 then
  redis.call('HINCRBY', KEYS[5], 'version_count', string.format('%d', -#removed / 2))
  if bytes > 0 then redis.call('HINCRBY', KEYS[5], 'logical_bytes', string.format('%d', -bytes)) end
end
return {'ok', removed, now}
