-- A process is dead: forget its sockets. Only the first survivor to run this wins (and
-- recovers for it); the others get 0. The winner is the one that sets the tombstone, not
-- the one that takes the process out of `rm:servers`: after Redis lost its data a dead
-- process may be in no set at all, only in the survivors' views. The tombstone lasts an
-- hour, long past any recovery; a false death is cleared by the process's next `up`.
-- KEYS: seq, channel, servers, sockets, draining, tombstone.
-- ARGV: the dead server, the user-sockets prefix.
-- Needs event.lua.
local servers, sockets, draining, tombstone = KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local dead, user_sockets_prefix = ARGV[1], ARGV[2]

if not redis.call('SET', tombstone, '1', 'NX', 'EX', 3600) then return 0 end
redis.call('SREM', servers, dead)
local all = redis.call('HGETALL', sockets)
local prefix = dead .. ' '
for i = 1, #all, 2 do
  local member, value = all[i], all[i + 1]
  if string.sub(member, 1, #prefix) == prefix then
    local uid = string.match(value, '^%d+ (.*)$')
    redis.call('HDEL', sockets, member)
    local user_sockets = user_sockets_prefix .. uid
    redis.call('ZREM', user_sockets, member)
    if redis.call('ZCARD', user_sockets) == 0 then redis.call('HDEL', draining, uid) end
  end
end
return event({t = 'down', s = dead})
