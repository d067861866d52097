-- A socket left; a user left with no socket stops draining, in the same step.
-- KEYS: seq, channel, sockets, the user's sockets, draining.
-- ARGV: server, sid, uid, 1 if the server will give messages back.
-- Needs event.lua.
local sockets, user_sockets, draining = KEYS[3], KEYS[4], KEYS[5]
local server, sid, uid, giving_back = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])

local member = server .. ' ' .. sid
redis.call('ZREM', user_sockets, member)
redis.call('HDEL', sockets, member)
if redis.call('ZCARD', user_sockets) == 0 then redis.call('HDEL', draining, uid) end
return event({t = 'off', s = server, c = sid, u = uid, r = giving_back})
