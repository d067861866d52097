-- Replace in-flight entries another program wrote by the envelopes made of them (which
-- have ids), keeping their places. Atomic: a crash between the removal and the add would
-- lose the entry.
-- KEYS: the server's in-flight set for the user.
-- ARGV: per entry, the old member, the new one, and its score.
local inflight = KEYS[1]

for i = 1, #ARGV, 3 do
  local old, new, score = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  redis.call('ZREM', inflight, old)
  redis.call('ZADD', inflight, score, new)
end
return 0
