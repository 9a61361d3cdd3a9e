-- A path's timeline (P:{ns}:t:<path>, see keys.py) exists once a forget left gaps in its version
-- numbers: a ZSET of its remaining versions, member the version number zero-padded to 20 digits
-- (equal times then order by number), score created_ms. Without gaps the version numbers are the
-- timeline (1..head, created_ms never decreasing), and the key does not exist.
local function timeline_member(version)
  return string.format('%020d', tonumber(version))
end
