-- A batch of writes in one step: queue appends (with the TTL refreshed and the oldest cut
-- past the cap) and in-flight records. Atomic, so that two servers appending at once
-- cannot cut each other's messages, a crash cannot leave a queue without its TTL, and a
-- retry after a lost reply cannot half-repeat a batch.
-- Appends keep the queue in the order of the sequence even when two servers append for one
-- user at nearly the same time (the owner changing hands, say): one that arrives late is
-- put in its place, not at the end. One whose id is there already is not added again: a
-- batch sent again after its reply was lost (Redis restarting, with the batch in its
-- append-only file) would otherwise queue it twice.
-- KEYS: one list or sorted set per write, then the server's in-flight index.
-- ARGV: the TTL, the cap, then per write: "q" (queue) or "f" (in flight), the envelope,
-- for "q" the in-flight set to take it out of (or "") and for "f" its score, and the uid.
-- Returns, per write, the messages cut from the head of its queue (none for "f").
-- Needs position.lua.
local index = KEYS[#KEYS]
local ttl, cap = ARGV[1], tonumber(ARGV[2])

local cut = {}
local function append(key, item)
  local at, other = -1, nil
  while true do
    other = redis.call('LINDEX', key, at)
    if not other or not before(item, other) then break end
    at = at - 1
  end
  local id = id_of(item)
  if other and id and id_of(other) == id then return redis.call('LLEN', key) end
  if at == -1 then return redis.call('RPUSH', key, item) end
  local after = redis.call('LINDEX', key, at)
  if after then return redis.call('LINSERT', key, 'AFTER', after, item) end
  return redis.call('LPUSH', key, item)
end
for i = 1, #KEYS - 1 do
  local at = 3 + (i - 1) * 4
  local key, kind, item, extra, uid = KEYS[i], ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  if kind == 'q' then
    if extra ~= '' then redis.call('ZREM', extra, item) end  -- extra: the in-flight set
    local n = append(key, item)
    redis.call('EXPIRE', key, ttl)
    if n > cap then cut[#cut + 1] = redis.call('LPOP', key, n - cap) else cut[#cut + 1] = {} end
  else
    redis.call('ZADD', key, extra, item)  -- extra: the score
    redis.call('SADD', index, uid)
  end
end
return cut
