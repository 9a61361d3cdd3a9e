"""Lua scripts of the metadata store (see ``service/metadata.py`` for the key schema).

Every key a script touches is passed in KEYS and carries the namespace hash tag, so each script
runs on one slot and stays legal on Redis Cluster. The scripts never use cjson: a version record is
JSON built by Python, prefixed inside the script with the two fields only the script can know
(``{"version":N,"created_ms":T,...``). That fixed prefix lets the read scripts pick ``created_ms``
out with a pattern, and keeps Lua away from the 64-bit integers (sizes, mtimes) that a Lua double
would round.
"""

from __future__ import annotations

_SLICES = r"""
-- Calls fn(batch, start, got) for each slice of up to 2048 digests of the concatenated 32-byte
-- string d, where got is HMGET of that slice on hash key and start the slice's offset (0-based).
local function each_slice(key, d, fn)
  local n = #d / 32
  local i = 0
  while i < n do
    local m = math.min(n - i, 2048)
    local batch = {}
    for j = 1, m do
      local o = (i + j - 1) * 32
      batch[j] = string.sub(d, o + 1, o + 32)
    end
    fn(batch, i, redis.call('HMGET', key, unpack(batch)))
    i = i + m
  end
end
"""

_FIND_MISSING = _SLICES + r"""
-- The digests of the concatenated 32-byte string d that are not fields of hash key, concatenated,
-- in order.
local function find_missing(key, d)
  local missing = {}
  each_slice(key, d, function(batch, start, got)
    for j = 1, #batch do
      if not got[j] then missing[#missing + 1] = batch[j] end
    end
  end)
  return table.concat(missing)
end
"""
# Digests arrive as one concatenated binary string: 200k separate ARGV entries would cost far more
# in the protocol and in Lua table building. They are checked with HMGET in slices, which stays
# well under Lua's C stack limit (8000) for unpack(); measured on 200k digests: one HEXISTS each
# 230 ms, HMGET slices of 512 165 ms, of 2048 145 ms.
WRITE_VERSION = _FIND_MISSING + r"""
-- KEYS: 1 files zset, 2 head hash, 3 versions hash, 4 events stream, 5 chunk index, 6 stats hash
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
"""

MISSING_CHUNKS = _FIND_MISSING + r"""
-- KEYS: 1 chunk index; ARGV: 1 concatenated 32-byte digests. Returns the absent ones, concatenated:
-- a reply of only the missing digests is far cheaper to parse than one HMGET value per digest.
return find_missing(KEYS[1], ARGV[1])
"""

READ_RECORDS = r"""
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
"""

READ_VERSIONS = r"""
-- KEYS: 1 head hash, 2 versions hash; ARGV: 1 limit (0 = all). Newest first.
local n = tonumber(redis.call('HGET', KEYS[1], 'version')) or 0
local limit = tonumber(ARGV[1])
local last = 1
if limit > 0 and n - limit + 1 > 1 then last = n - limit + 1 end
local out = {}
local v = n
while v >= last do
  local stop = math.max(last, v - 511)
  local fields = {}
  for k = v, stop, -1 do fields[#fields + 1] = string.format('%d', k) end
  local got = redis.call('HMGET', KEYS[2], unpack(fields))
  for j = 1, #got do out[#out + 1] = got[j] end
  v = stop - 1
end
return out
"""

ADD_CHUNKS = _SLICES + r"""
-- KEYS: 1 chunk index, 2 stats hash
-- ARGV: 1 concatenated 32-byte digests (no duplicates), 2 their lengths, comma-separated
-- One HMGET and one HSET per slice: a single HSET of many fields is also one AOF entry, where
-- one HSETNX per digest would be 200k entries for a 200k-chunk upload.
local lengths = {}
for len in string.gmatch(ARGV[2], '%d+') do lengths[#lengths + 1] = len end
local added = 0
local bytes = 0
each_slice(KEYS[1], ARGV[1], function(batch, start, got)
  local new = {}
  for j = 1, #batch do
    if not got[j] then
      new[#new + 1] = batch[j]
      new[#new + 1] = lengths[start + j]
      bytes = bytes + tonumber(lengths[start + j])
    end
  end
  if #new > 0 then
    redis.call('HSET', KEYS[1], unpack(new))
    added = added + #new / 2
  end
end)
if bytes > 0 then redis.call('HINCRBY', KEYS[2], 'unique_bytes', string.format('%d', bytes)) end
return added
"""

REMOVE_CHUNKS = r"""
-- KEYS: 1 chunk index, 2 stats hash; ARGV: 1 concatenated 32-byte digests
local d = ARGV[1]
local removed = 0
local bytes = 0
for i = 0, #d / 32 - 1 do
  local dg = string.sub(d, i * 32 + 1, i * 32 + 32)
  local len = redis.call('HGET', KEYS[1], dg)
  if len then
    redis.call('HDEL', KEYS[1], dg)
    removed = removed + 1
    bytes = bytes + tonumber(len)
  end
end
if bytes > 0 then redis.call('HINCRBY', KEYS[2], 'unique_bytes', string.format('%d', -bytes)) end
return removed
"""
