-- A socket identified. Atomic with the count of the user's sockets on every process, so
-- that two tabs identifying on two processes at once cannot both slip under the limit,
-- and both cannot both think they are first (and both drain).
-- KEYS: seq, channel, sockets, the user's sockets, draining.
-- ARGV: server, sid, uid, the user's limit of sockets.
-- Needs event.lua (its KEYS[1] and KEYS[2]).
local seq, channel, sockets, user_sockets, draining = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local server, sid, uid, limit = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])

local member = server .. ' ' .. sid
local first = redis.call('ZCARD', user_sockets) == 0
local g = redis.call('INCR', seq)
redis.call('ZADD', user_sockets, g, member)
redis.call('HSET', sockets, member, g .. ' ' .. uid)
local evicted = {}
while redis.call('ZCARD', user_sockets) > limit do
  local old = redis.call('ZPOPMIN', user_sockets)[1]
  redis.call('HDEL', sockets, old)
  evicted[#evicted + 1] = old
end
if first then redis.call('HSET', draining, uid, g) end
redis.call('PUBLISH', channel, cjson.encode({g = g, t = 'on', s = server, c = sid, u = uid,
  x = evicted, d = first and 1 or 0}))
return g
