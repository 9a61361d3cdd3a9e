-- #include find_missing.lua
-- #include timeline.lua
-- KEYS: 1 files zset, 2 head hash, 3 versions hash, 4 events stream, 5 chunk index, 6 stats hash,
--       7 timeline zset (kept current once a forget created it)
-- ARGV: 1 kind ('put'|'delete'), 2 path, 3 if_version ('' = any), 4 now_ms ('' = server clock),
--       5 record body (JSON object), 6 size, 7 concatenated 32-byte chunk digests,
--       8 manifest digest hex, 9 identity,
--       10 the uncompressed length of each digest of 7, comma-separated ('' = lengths unchecked)
local kind = ARGV[1]
local h = redis.call('HMGET', KEYS[2], 'version', 'created_ms', 'deleted')
local cur = tonumber(h[1]) or 0
local live = cur > 0 and h[3] == '0'
if kind == 'delete' and not live then
  return {'notfound', cur}
end
if ARGV[3] ~= '' then
  local want = tonumber(ARGV[3])
  if (want == 0 and live) or (want ~= 0 and want ~= cur) then
    return {'conflict', cur}
  end
end
if kind == 'put' then
  if ARGV[10] == '' then
    local missing = find_missing(KEYS[5], ARGV[7])
    if missing ~= '' then
      return {'missing', missing}
    end
  else
    -- every chunk must be in the index with the length the manifest gives it
    -- (the lengths are read in step with the slices: no table of 200k strings is built)
    local next_length = string.gmatch(ARGV[10], '%d+')
    local missing = {}
    local wrong = nil
    each_slice(KEYS[5], ARGV[7], function(batch, start, got)
      for j = 1, #batch do
        local want = next_length()
        if not got[j] then
          missing[#missing + 1] = batch[j]
        elseif wrong == nil and got[j] ~= want then
          wrong = {'badlength', batch[j], got[j], want}
        end
      end
    end)
    if #missing > 0 then
      return {'missing', table.concat(missing)}
    end
    if wrong then
      return wrong
    end
  end
end
local now
if ARGV[4] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[4])
end
-- created_ms never goes backwards along a path, so "newest version at or before T" is a
-- binary search over version numbers
local prev = tonumber(h[2]) or 0
if now < prev then now = prev end
local vs = string.format('%d', cur + 1)
local ts = string.format('%d', now)
local rec = '{"version":' .. vs .. ',"created_ms":' .. ts .. ',' .. string.sub(ARGV[5], 2)
local size = ARGV[6]
local deleted = '0'
if kind == 'delete' then deleted = '1' end
redis.call('HSET', KEYS[3], vs, rec)
if redis.call('EXISTS', KEYS[7]) == 1 then redis.call('ZADD', KEYS[7], ts, timeline_member(vs)) end
redis.call('HSET', KEYS[2], 'version', vs, 'created_ms', ts, 'deleted', deleted)
redis.call('ZADD', KEYS[1], 0, ARGV[2])
redis.call('HINCRBY', KEYS[6], 'version_count', 1)
if kind == 'put' then
  if not live then redis.call('HINCRBY', KEYS[6], 'file_count', 1) end
  if size ~= '0' then redis.call('HINCRBY', KEYS[6], 'logical_bytes', size) end
else
  redis.call('HINCRBY', KEYS[6], 'file_count', -1)
end
local id = redis.call('XADD', KEYS[4], '*', 'kind', kind, 'path', ARGV[2], 'version', vs,
  'size', size, 'time_ms', ts, 'identity', ARGV[9], 'manifest', ARGV[8])
return {'ok', rec, id}
