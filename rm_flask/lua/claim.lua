-- Take the next batch of a queue into the server's in-flight set (a drain's claim).
-- Atomic so that no message is ever outside Redis, or in both places, whatever dies when.
-- A batch stops at the drain's end if one is given (messages from before that event only),
-- and before an entry the set holds already: two byte-identical entries (plain text an app
-- pushed twice) would be one member of the set, and a crash before `adopt` gives each its
-- own id would give back only one of them.
-- KEYS: the queue, the server's in-flight set for the user, the server's in-flight index.
-- ARGV: how many at most, the first score, the uid, the end's event (0: none), its era.
-- Needs position.lua.
local queue, inflight, index = KEYS[1], KEYS[2], KEYS[3]
local count, first_score, uid = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local end_event, end_era = tonumber(ARGV[4]), ARGV[5]

local items = redis.call('LRANGE', queue, 0, count - 1)
local seen = {}
for i = 1, #items do
  local g, _, era = position(items[i])
  if (end_event > 0 and era == end_era and g >= end_event)
      or (i > 1 and (seen[items[i]] or redis.call('ZSCORE', inflight, items[i]))) then
    for j = #items, i, -1 do items[j] = nil end
    break
  end
  seen[items[i]] = true
end
if #items == 0 then return items end
redis.call('LTRIM', queue, #items, -1)
for i, item in ipairs(items) do
  redis.call('ZADD', inflight, first_score + i - 1, item)
end
redis.call('SADD', index, uid)
return items
