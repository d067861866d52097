-- The inbox reader forwards a batch of stream entries into the sequence: each is
-- PUBLISHed on the inbox channel, framed with its entry id, unless its `key` was given to
-- another entry within the TTL (then it is acknowledged, not sent).
-- Atomic with the lease check, so that a reader that lost its lease (paused past it)
-- cannot forward anything once the next one has begun: two forwarding at once would mix
-- the stream's order. The key is checked and taken in the same step so that two readers
-- can never both send one key.
-- KEYS: the lease, the stream, the inbox channel.
-- ARGV: this server's id, the key TTL, the key prefix, the consumer group, then per entry:
-- its id, its channel, its data, its key ("" for none).
-- Returns -1 if the lease is not ours, else {entries handled, of them repeats}: it stops
-- at an entry no server was subscribed to hear (the rest go in a later call, in order).
local lease, stream, channel = KEYS[1], KEYS[2], KEYS[3]
local me, ttl, prefix, group = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]

if redis.call('GET', lease) ~= me then return -1 end
local done, repeats = 0, 0
for i = 5, #ARGV, 4 do
  local id, target, data, key = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local first = id
  if key ~= '' then first = redis.call('GET', prefix .. key) or id end
  if first ~= id then
    redis.call('XACK', stream, group, id)
    repeats = repeats + 1
  elseif redis.call('PUBLISH', channel, id .. '\n' .. target .. '\n' .. data) == 0 then
    break
  elseif key ~= '' then
    redis.call('SET', prefix .. key, id, 'EX', ttl)
  end
  done = done + 1
end
return {done, repeats}
