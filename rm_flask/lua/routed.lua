-- A server routed its part of forwarded inbox entries (queued in Redis, or written to its
-- sockets). An entry leaves the group's pending list only once every server in the view
-- at its place in the sequence has done so (SPEC §9): a server killed before its part is
-- done leaves the entry pending, and it is forwarded again. Each server notes itself in
-- the entry's set of servers that routed it, and the last one acknowledges it.
-- Atomic: two servers finishing one entry at the same moment must not each see the
-- other still missing (nobody would acknowledge it), nor both acknowledge and delete.
-- KEYS: the stream.
-- ARGV: the consumer group, this server, the sets' TTL in ms, the sets' key prefix, how
-- many servers to wait for, those servers (0 of them: only note ours, the others decide),
-- then the entry ids.
-- Returns how many entries it acknowledged.
local stream = KEYS[1]
local group, me, ttl, prefix, n = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local acked = 0
for i = 6 + n, #ARGV do
  local id = ARGV[i]
  local set = prefix .. id
  local all = n > 0
  for j = 6, 5 + n do
    local server = ARGV[j]
    if all and server ~= me and redis.call('SISMEMBER', set, server) == 0 then all = false end
  end
  if all then
    redis.call('XACK', stream, group, id)
    if n > 1 then redis.call('DEL', set) end
    acked = acked + 1
  else
    redis.call('SADD', set, me)
    redis.call('PEXPIRE', set, ttl)
  end
end
return acked
