-- Every other event (ping, ending, sealed, returned, ready, redone, recovered). Those that
-- start or end drains change `draining` in the same step, so that a process loading the
-- state later finds the drains the sequence says.
-- KEYS: seq, channel, draining, then the users' socket sets.
-- ARGV: kind, server, 'start' / 'end' / '', what the event refers to (an event number, a
-- position, or a server: cluster_events.parse reads it as the kind says), then one uid
-- per user key.
-- Needs event.lua.
local seq, channel, draining = KEYS[1], KEYS[2], KEYS[3]
local kind, server, drain, ref = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local started, users = {}, {}
for i = 4, #KEYS do
  local uid, user_sockets = ARGV[i + 1], KEYS[i]
  users[#users + 1] = uid
  if drain == 'end' then
    redis.call('HDEL', draining, uid)
  elseif drain == 'start' and redis.call('ZCARD', user_sockets) > 0
      and redis.call('HEXISTS', draining, uid) == 0 then
    started[#started + 1] = uid
  end
end
local g = redis.call('INCR', seq)
for _, uid in ipairs(started) do redis.call('HSET', draining, uid, g) end
-- `ref` as text: a server id of digits would otherwise become a number.
redis.call('PUBLISH', channel, cjson.encode({g = g, t = kind, s = server, e = ref, u = users,
  w = started}))
return g
