-- Shared by the cluster's scripts: number an event and publish it, in the step that
-- changes the state it announces, so that the state in Redis and the event's place in the
-- sequence can never disagree (a process that joins reads the one and follows the other).
-- KEYS[1]: the event counter; KEYS[2]: the cluster channel (every script passes both first).
local function event(fields)
  fields.g = redis.call('INCR', KEYS[1])
  redis.call('PUBLISH', KEYS[2], cjson.encode(fields))
  return fields.g
end
