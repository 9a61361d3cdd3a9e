-- #include find_missing.lua
-- #include timeline.lua
-- Writes one version (a put or a delete marker) of one path; shared by write_version.lua (one
-- file) and write_versions.lua (a group of files in one call). Returns the reply of that file:
-- {'ok', record, feed id} or {'moved', head, head record (false if none)} or
-- {'conflict'|'notfound', head} or {'missing', digests} or
-- {'badlength', digest, stored, given}; anything but 'ok' changes nothing.
-- k: files, head, versions, events, chunks, stats, timeline (key names; the timeline zset is
--    kept current once a forget created it)
-- a: 1 kind ('put'|'delete'), 2 path, 3 if_version ('' = any), 4 expected head version ('' =
--    unchecked: the version the caller diffed against; another head answers 'moved'),
--    5 record body (JSON object), 6 size, 7 concatenated 32-byte chunk digests,
--    8 manifest digest hex, 9 identity,
--    10 the uncompressed length of each digest of 7, comma-separated ('' = lengths unchecked)
-- now: the commit time in ms (the server clock unless the caller fixed it)
local function put_version(k, a, now)
  local kind = a[1]
  local h = redis.call('HMGET', k.head, 'version', 'created_ms', 'deleted')
  local cur = tonumber(h[1]) or 0
  local live = cur > 0 and h[3] == '0'
  if kind == 'delete' and not live then
    return {'notfound', cur}
  end
  if a[3] ~= '' then
    local want = tonumber(a[3])
    if (want == 0 and live) or (want ~= 0 and want ~= cur) then
      return {'conflict', cur}
    end
  end
  if a[4] ~= '' and tonumber(a[4]) ~= cur then
    return {'moved', cur, redis.call('HGET', k.versions, string.format('%d', cur))}
  end
  if kind == 'put' then
    if a[10] == '' then
      local missing = find_missing(k.chunks, a[7])
      if missing ~= '' then
        return {'missing', missing}
      end
    else
      -- every chunk must be in the index with the length the manifest gives it
      -- (the lengths are read in step with the slices: no table of 200k strings is built)
      local next_length = string.gmatch(a[10], '%d+')
      local missing = {}
      local wrong = nil
      each_slice(k.chunks, a[7], function(batch, start, got)
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
  -- created_ms never goes backwards along a path, so "newest version at or before T" is a
  -- binary search over version numbers
  local prev = tonumber(h[2]) or 0
  if now < prev then now = prev end
  local vs = string.format('%d', cur + 1)
  local ts = string.format('%d', now)
  local rec = '{"version":' .. vs .. ',"created_ms":' .. ts .. ',' .. string.sub(a[5], 2)
  local size = a[6]
  local deleted = '0'
  if kind == 'delete' then deleted = '1' end
  redis.call('HSET', k.versions, vs, rec)
  if redis.call('EXISTS', k.timeline) == 1 then redis.call('ZADD', k.timeline, ts, timeline_member(vs)) end
  redis.call('HSET', k.head, 'version', vs, 'created_ms', ts, 'deleted', deleted)
  redis.call('ZADD', k.files, 0, a[2])
  redis.call('HINCRBY', k.stats, 'version_count', 1)
  if kind == 'put' then
    if not live then redis.call('HINCRBY', k.stats, 'file_count', 1) end
    if size ~= '0' then redis.call('HINCRBY', k.stats, 'logical_bytes', size) end
  else
    redis.call('HINCRBY', k.stats, 'file_count', -1)
  end
  local id = redis.call('XADD', k.events, '*', 'kind', kind, 'path', a[2], 'version', vs,
    'size', size, 'time_ms', ts, 'identity', a[9], 'manifest', a[8])
  return {'ok', rec, id}
end

-- The commit time: ARGV value t in ms, or the server clock when t is ''.
local function commit_time(t)
  if t ~= '' then return tonumber(t) end
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end
