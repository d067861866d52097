-- Give in-flight messages back to the queue, in their original order, ahead of anything
-- queued since: at the head, unless the queue holds older messages (another server
-- queued them after a drain that stopped halfway), which they go after. Atomic for the
-- same reason as claim.lua: removal and push together.
-- A member given is pushed even when the set does not hold it: a live message whose
-- tracking write failed is still ours to give back. One the queue holds already is not
-- pushed again: two processes whose tabs of one user both went away give back the same
-- message (each kept what its own tab missed). Its copy is where it would go, its place
-- in the sequence being its id.
-- KEYS: the queue, the server's in-flight set for the user, the server's in-flight index.
-- ARGV: the TTL, the uid, then the members to give back, oldest first (none: all of them).
-- Needs position.lua.
local queue, inflight, index = KEYS[1], KEYS[2], KEYS[3]
local ttl, uid = ARGV[1], ARGV[2]

local items
if #ARGV > 2 then
  items = {}
  for i = 3, #ARGV do
    redis.call('ZREM', inflight, ARGV[i])
    items[#items + 1] = ARGV[i]
  end
else
  items = redis.call('ZRANGE', inflight, 0, -1)
  redis.call('DEL', inflight)
end
local at = 0
for _, item in ipairs(items) do
  local pivot = redis.call('LINDEX', queue, at)
  while pivot and before(pivot, item) do
    at = at + 1
    pivot = redis.call('LINDEX', queue, at)
  end
  local id = id_of(item)
  if pivot and id and id_of(pivot) == id then
    -- queued already: the next goes after it
  elseif pivot then redis.call('LINSERT', queue, 'BEFORE', pivot, item)
  else redis.call('RPUSH', queue, item) end
  at = at + 1
end
if #items > 0 then redis.call('EXPIRE', queue, ttl) end
if redis.call('EXISTS', inflight) == 0 then redis.call('SREM', index, uid) end
return items
