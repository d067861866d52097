-- Forget delivered messages; drop the uid from the server's index once its set is empty,
-- in the same step, so the index never misses a uid that still has messages in flight.
-- KEYS: in-flight sets, then the server's index.
-- ARGV: per set, its uid, how many members follow, and the members.
local index = KEYS[#KEYS]

local at = 1
for i = 1, #KEYS - 1 do
  local inflight, uid, n = KEYS[i], ARGV[at], tonumber(ARGV[at + 1])
  for j = at + 2, at + 1 + n do redis.call('ZREM', inflight, ARGV[j]) end
  if redis.call('EXISTS', inflight) == 0 then redis.call('SREM', index, uid) end
  at = at + 2 + n
end
return 0
