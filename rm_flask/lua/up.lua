-- A process joins (or rejoins after losing its subscription) and reads the state as of its
-- `up` event, which it then follows. Its own identified sockets are put back if Redis lost
-- them (a restart without persistence, FLUSHALL), and named in the event, so that a
-- process that loaded its view before they were back learns them. The heartbeat is
-- written here too, so that the process is never in `rm:servers` without one, and a
-- tombstone of an earlier false death is cleared. The process subscribes to the apps'
-- channels only once it has read this event, and then publishes `ready` (see View).
-- A user whose sockets are back after being nowhere drains: others may have queued for
-- them meanwhile (an owner that came back first decided them offline). Still subscribed,
-- every process kept deciding with the same view all along, and nobody did.
-- KEYS: seq, channel, servers, sockets, draining, era, user-sockets prefix, heartbeat,
-- tombstone.
-- ARGV: server, era candidate, heartbeat text, heartbeat TTL, 1 if the process was not
-- subscribed (it joins, or lost its subscription: it publishes `ready` once it receives
-- messages again) or 0 (still subscribed, after FLUSHALL: nothing was missed), then sid,
-- uid pairs.
-- Returns the state as of the event: its number, the era, servers, sockets, draining.
local seq, channel, servers, sockets, draining = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local era, user_sockets_prefix, heartbeat, tombstone = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local server, era_candidate, about, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local rejoin = ARGV[5] == '1'

redis.call('SET', heartbeat, about, 'EX', ttl)
redis.call('DEL', tombstone)
redis.call('SADD', servers, server)
redis.call('SET', era, era_candidate, 'NX')
local back, started = {}, {}
for i = 6, #ARGV, 2 do
  local sid, uid = ARGV[i], ARGV[i + 1]
  local member, user_sockets = server .. ' ' .. sid, user_sockets_prefix .. uid
  if redis.call('HEXISTS', sockets, member) == 0 then
    if rejoin and redis.call('ZCARD', user_sockets) == 0 then started[#started + 1] = uid end
    local g = redis.call('INCR', seq)
    redis.call('HSET', sockets, member, g .. ' ' .. uid)
    redis.call('ZADD', user_sockets, g, member)
    back[#back + 1] = sid .. ' ' .. uid
  end
end
local g = redis.call('INCR', seq)
for _, uid in ipairs(started) do redis.call('HSET', draining, uid, g) end
redis.call('PUBLISH', channel, cjson.encode({g = g, t = 'up', s = server, k = back, w = started,
  r = rejoin and 1 or 0}))
return {g, redis.call('GET', era), redis.call('SMEMBERS', servers),
        redis.call('HGETALL', sockets), redis.call('HGETALL', draining)}
