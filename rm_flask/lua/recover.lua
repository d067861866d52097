-- A dead server's work, redone by a survivor: what it held in flight for a user, and the
-- messages it was to deliver or queue after its last checkpoint (from the survivor's own
-- copy of the sequence), merged into the queue in the order of the sequence, each id once.
-- Atomic: the dead server's set and the queue change together, or not at all.
-- KEYS: the queue, the dead server's in-flight set and index, and optionally a set of the
-- ids merged lately (a redo by several processes: each id is merged once, even after a
-- drain took the first copy).
-- ARGV: TTL, uid, the current era (messages of another come first, in their order), how
-- many messages, the messages, then each one's place in the sequence ("" to read it from
-- its id; an inbox message's id has none). Returns how many were given.
-- Needs position.lua.
local queue, inflight, index, merged = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ttl, uid, era_now, k = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])

local items = redis.call('ZRANGE', inflight, 0, -1)
local places = {}  -- index in items -> the place given for it
local merged_from = #items + 1
for i = 5, 4 + k do
  local id = id_of(ARGV[i])
  if not merged or not id or redis.call('SADD', merged, id) == 1 then
    items[#items + 1] = ARGV[i]
    if ARGV[i + k] ~= '' then places[#items] = ARGV[i + k] end
  end
end
if merged then redis.call('EXPIRE', merged, 120) end
local given = #items
local queued_from = #items + 1
for _, item in ipairs(redis.call('LRANGE', queue, 0, -1)) do items[#items + 1] = item end
-- Inbox messages have no place in their ids, but their entry ids keep the stream's
-- order, in which they were forwarded: a queued one goes after every merged one of an
-- older entry. The merged ones with a place, by entry id, each with the furthest place
-- of those up to it.
local function later(ag, an, bg, bn) return ag > bg or (ag == bg and an > bn) end
local placed = {}
for i = merged_from, queued_from - 1 do
  local ms, sq = entry_of(id_of(items[i]))
  if ms and places[i] then
    local g, n, era = place(places[i])
    if era == era_now then placed[#placed + 1] = {ms, sq, g, n} end
  end
end
table.sort(placed, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
for j = 2, #placed do
  local prev, cur = placed[j - 1], placed[j]
  if later(prev[3], prev[4], cur[3], cur[4]) then cur[3], cur[4] = prev[3], prev[4] end
end
local function after_older_entries(id)
  local ms, sq = entry_of(id)
  if not ms then return nil end
  local lo, hi, found = 1, #placed, nil
  while lo <= hi do
    local mid = math.floor((lo + hi) / 2)
    local p = placed[mid]
    if p[1] < ms or (p[1] == ms and p[2] < sq) then found, lo = p, mid + 1 else hi = mid - 1 end
  end
  return found
end

local seen, rows = {}, {}
local last_g, last_n = -1, 0
for i, item in ipairs(items) do
  if i == merged_from or i == queued_from then last_g, last_n = -1, 0 end
  local id = id_of(item)
  if not id or not seen[id] then
    if id then seen[id] = true end
    local g, n, era
    if places[i] then g, n, era = place(places[i]) else g, n, era = position(item) end
    if era == nil then
      -- An entry with no place in the sequence (another program wrote it, or an inbox
      -- message): it keeps the one of the entry before it from the same source (the
      -- in-flight set, the merged messages, the queue), or goes first; a queued inbox
      -- message also goes after the merged ones of older entries.
      g, n = last_g, last_n
      local older = i >= queued_from and after_older_entries(id)
      if older and later(older[3], older[4], g, n) then g, n = older[3], older[4] end
    elseif era ~= era_now then
      g, n = -1, 0
    end
    last_g, last_n = g, n
    rows[#rows + 1] = {g, n, i, item}
  end
end
table.sort(rows, function(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  if a[2] ~= b[2] then return a[2] < b[2] end
  return a[3] < b[3]
end)
redis.call('DEL', queue, inflight)
redis.call('SREM', index, uid)
for i = 1, #rows, 500 do
  local chunk = {}
  for j = i, math.min(i + 499, #rows) do chunk[#chunk + 1] = rows[j][4] end
  redis.call('RPUSH', queue, unpack(chunk))
end
if #rows > 0 then redis.call('EXPIRE', queue, ttl) end
return given
