-- A batch a drain sent, for the user's sockets on other processes (SPEC §5.4: each socket
-- gets each queued message), or a replay to one socket that joined (what this process
-- holds for the user, older than that socket). An event, so that each process sends it
-- in its place among the user's messages.
-- KEYS: seq, channel.
-- ARGV: server, uid, 1 if the drain is over (the live messages held back go now), the one
-- socket it is for (the sid of one that joined) or "" for all, then the envelopes.
-- Needs event.lua.
local server, uid, over, to = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]

local batch = {}
for i = 5, #ARGV do batch[#batch + 1] = ARGV[i] end
return event({t = 'copy', s = server, u = {uid}, f = over, c = to, m = batch})
