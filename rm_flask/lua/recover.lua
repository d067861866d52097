-- A dead server's work, redone by a survivor: what it held in flight for a user, and the
-- messages it was to deliver or queue after its last checkpoint (from the survivor's own
-- copy of the sequence), merged into the queue in the order of the sequence, each id once.
-- Atomic: the dead server's set and the queue change together, or not at all.
-- KEYS: the queue, the dead server's in-flight set and index, and optionally a set of the
-- ids merged lately (a redo by several processes: each id is merged once, even after a
-- drain took the first copy).
-- ARGV: TTL, uid, the current era (messages of another come first, in their order), then
-- the messages. Returns how many were given.
-- Needs position.lua.
local queue, inflight, index, merged = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ttl, uid, era_now = ARGV[1], ARGV[2], ARGV[3]

local items = redis.call('ZRANGE', inflight, 0, -1)
for i = 4, #ARGV do
  local id = id_of(ARGV[i])
  if not merged or not id or redis.call('SADD', merged, id) == 1 then
    items[#items + 1] = ARGV[i]
  end
end
if merged then redis.call('EXPIRE', merged, 120) end
local given = #items
for _, item in ipairs(redis.call('LRANGE', queue, 0, -1)) do items[#items + 1] = item end
local seen, rows = {}, {}
local last_g, last_n = -1, 0
for i, item in ipairs(items) do
  local id = id_of(item)
  if not id or not seen[id] then
    if id then seen[id] = true end
    local g, n, era = position(item)
    if era == nil then
      -- An entry another program wrote has no place in the sequence: it keeps the one
      -- of the entry before it.
      g, n = last_g, last_n
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
