"""The offline queues and in-flight sets in Redis (SPEC §5, rules 2, 4 and 5).

A message is in exactly one of two places from the moment it is queued until it is
delivered: the user's queue `rm:users:$uid:messages`, or the in-flight set of the server
that took it for delivery (`rm:inflight:$server:$uid`, ordered by score). Every move
between the two is one Lua script, so a `kill -9` at any instant leaves each message in
one place or the other, never in neither and never in both. In-flight sets of a server
that died go back to the head of their queues (`recommit_dead`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import redis

from . import names

# Where a stored envelope stands in the sequence of messages all servers read: its id is
# "$era.$event.$count" (hex, see cluster.message_id). The era changes when Redis loses
# its data (event numbers start again); positions compare within one era only.
_POSITION = """
local function position(item)
  local era, g, n = string.match(item, '^{"id":"([^".]*)%.(%x+)%.(%x+)"')
  if g then return tonumber(g, 16), tonumber(n, 16), era end
  return -1, 0, nil
end
local function id_of(item)
  return string.match(item, '^{"id":"([^"]*)"')
end
local function before(a, b)
  local ag, an, aera = position(a)
  local bg, bn, bera = position(b)
  return aera ~= nil and aera == bera and (ag < bg or (ag == bg and an < bn))
end
"""

# A batch of writes in one step: queue appends (with the TTL refreshed and the oldest cut
# past the cap) and in-flight records. Atomic, so that two servers appending at once
# cannot cut each other's messages, a crash cannot leave a queue without its TTL, and a
# retry after a lost reply cannot half-repeat a batch.
# KEYS: one list or sorted set per write, then the server's in-flight index.
# ARGV: the TTL, the cap, then per write: "q" (queue) or "f" (in flight), the envelope,
# for "q" the in-flight set to take it out of (or "") and for "f" its score, and the uid.
# Appends keep the queue in the order of the sequence even when two servers append for one
# user at nearly the same time (the owner changing hands, say): one that arrives late is
# put in its place, not at the end. One whose id is there already is not added again: a
# batch sent again after its reply was lost (Redis restarting, with the batch in its
# append-only file) would otherwise queue it twice.
_WRITE = _POSITION + """
local ttl, cap, index = ARGV[1], tonumber(ARGV[2]), KEYS[#KEYS]
local cut = {}
local function append(key, item)
  local at, other = -1, nil
  while true do
    other = redis.call('LINDEX', key, at)
    if not other or not before(item, other) then break end
    at = at - 1
  end
  local id = id_of(item)
  if other and id and id_of(other) == id then return redis.call('LLEN', key) end
  if at == -1 then return redis.call('RPUSH', key, item) end
  local after = redis.call('LINDEX', key, at)
  if after then return redis.call('LINSERT', key, 'AFTER', after, item) end
  return redis.call('LPUSH', key, item)
end
for i = 1, #KEYS - 1 do
  local at = 3 + (i - 1) * 4
  if ARGV[at] == 'q' then
    if ARGV[at + 2] ~= '' then redis.call('ZREM', ARGV[at + 2], ARGV[at + 1]) end
    local n = append(KEYS[i], ARGV[at + 1])
    redis.call('EXPIRE', KEYS[i], ttl)
    if n > cap then cut[#cut + 1] = redis.call('LPOP', KEYS[i], n - cap) else cut[#cut + 1] = {} end
  else
    redis.call('ZADD', KEYS[i], ARGV[at + 2], ARGV[at + 1])
    redis.call('SADD', index, ARGV[at + 3])
  end
end
return cut
"""

# Move the first ARGV[1] messages of a queue into the server's in-flight set. Atomic so
# that no message is ever outside Redis, or in both places, whatever dies when. ARGV[4],
# if not 0: take only messages from before that event of era ARGV[5] (a drain's end).
# A batch also stops before an entry the set holds already: two byte-identical entries
# (plain text an app pushed twice) would be one member of the set, and a crash before
# `adopt` gives each its own id would give back only one of them.
_CLAIM = _POSITION + """
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
local limit = tonumber(ARGV[4])
local seen = {}
for i = 1, #items do
  local g, _, era = position(items[i])
  if (limit > 0 and era == ARGV[5] and g >= limit)
      or (i > 1 and (seen[items[i]] or redis.call('ZSCORE', KEYS[2], items[i]))) then
    for j = #items, i, -1 do items[j] = nil end
    break
  end
  seen[items[i]] = true
end
if #items == 0 then return items end
redis.call('LTRIM', KEYS[1], #items, -1)
local score = tonumber(ARGV[2])
for i, item in ipairs(items) do
  redis.call('ZADD', KEYS[2], score + i - 1, item)
end
redis.call('SADD', KEYS[3], ARGV[3])
return items
"""

# Replace in-flight entries another program wrote by the envelopes made of them (which
# have ids), keeping their places. Atomic: a crash between the removal and the add would
# lose the entry. ARGV: per entry, the old member, the new one, and its score.
_ADOPT = """
for i = 1, #ARGV, 3 do
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('ZADD', KEYS[1], ARGV[i + 2], ARGV[i + 1])
end
return 0
"""

# Put in-flight messages back in the queue, in their original order, ahead of anything
# queued since: at the head, unless the queue holds older messages (another server
# queued them after a drain that stopped halfway), which they go after. Atomic for the
# same reason as _CLAIM: removal and push together.
# ARGV: the TTL, the uid, then the members to give back, oldest first (none: all of them).
# A member given is pushed even when the set does not hold it: a live message whose
# tracking write failed is still ours to give back. One the queue holds already is not
# pushed again: two processes whose tabs of one user both went away give back the same
# message (each kept what its own tab missed). Its copy is where it would go, its place
# in the sequence being its id.
_RECOMMIT = _POSITION + """
local items
if #ARGV > 2 then
  items = {}
  for i = 3, #ARGV do
    redis.call('ZREM', KEYS[2], ARGV[i])
    items[#items + 1] = ARGV[i]
  end
else
  items = redis.call('ZRANGE', KEYS[2], 0, -1)
  redis.call('DEL', KEYS[2])
end
local at = 0
for _, item in ipairs(items) do
  local pivot = redis.call('LINDEX', KEYS[1], at)
  while pivot and before(pivot, item) do
    at = at + 1
    pivot = redis.call('LINDEX', KEYS[1], at)
  end
  local id = id_of(item)
  if pivot and id and id_of(pivot) == id then
    -- queued already: the next goes after it
  elseif pivot then redis.call('LINSERT', KEYS[1], 'BEFORE', pivot, item)
  else redis.call('RPUSH', KEYS[1], item) end
  at = at + 1
end
if #items > 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('SREM', KEYS[3], ARGV[2]) end
return items
"""

# Forget delivered messages; drop the uid from the server's index once its set is empty,
# in the same step, so the index never misses a uid that still has messages in flight.
# KEYS: in-flight sets, then the server's index. ARGV: per set, its uid, how many members
# follow, and the members.
_SETTLE = """
local index, at = KEYS[#KEYS], 1
for i = 1, #KEYS - 1 do
  local uid, n = ARGV[at], tonumber(ARGV[at + 1])
  for j = at + 2, at + 1 + n do redis.call('ZREM', KEYS[i], ARGV[j]) end
  if redis.call('EXISTS', KEYS[i]) == 0 then redis.call('SREM', index, uid) end
  at = at + 2 + n
end
return 0
"""


# A dead server's work, redone by a survivor: what it held in flight for a user, and the
# messages it was to deliver or queue after its last checkpoint (from the survivor's own
# copy of the sequence), merged into the queue in the order of the sequence, each id once.
# Atomic: the dead server's set and the queue change together, or not at all.
# KEYS: the queue, the dead server's in-flight set and index, and optionally a set of the
# ids merged lately (a redo by several processes: each id is merged once, even after a
# drain took the first copy). ARGV: TTL, uid, the current era (messages of another come
# first, in their order), then the messages.
_RECOVER = _POSITION + """
local items = redis.call('ZRANGE', KEYS[2], 0, -1)
for i = 4, #ARGV do
  local id = string.match(ARGV[i], '^{"id":"([^"]*)"')
  if not KEYS[4] or not id or redis.call('SADD', KEYS[4], id) == 1 then
    items[#items + 1] = ARGV[i]
  end
end
if KEYS[4] then redis.call('EXPIRE', KEYS[4], 120) end
local given = #items
for _, item in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do items[#items + 1] = item end
local seen, rows = {}, {}
local last_g, last_n = -1, 0
for i, item in ipairs(items) do
  local id = string.match(item, '^{"id":"([^"]*)"')
  if not id or not seen[id] then
    if id then seen[id] = true end
    local g, n, era = position(item)
    if era == nil then
      -- An entry another program wrote has no place in the sequence: it keeps the one
      -- of the entry before it.
      g, n = last_g, last_n
    elseif era ~= ARGV[3] then
      g, n = -1, 0
    end
    last_g, last_n = g, n
    rows[#rows + 1] = {g, n, i, item}
  end
end
table.sort(rows, function(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  if a[2] ~= b[2] then return a[2] < b[2] end
  return a[3] < b[3]
end)
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[2])
for i = 1, #rows, 500 do
  local chunk = {}
  for j = i, math.min(i + 499, #rows) do chunk[#chunk + 1] = rows[j][4] end
  redis.call('RPUSH', KEYS[1], unpack(chunk))
end
if #rows > 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return given
"""

RECOMMIT_CHUNK = 100  # messages, and bytes, given back by one script call at most
RECOMMIT_CHUNK_BYTES = 256 * 1024


class Store:
    """Queue and in-flight operations for one server process."""

    def __init__(
        self,
        client: redis.Redis,
        server_id: str,
        queue_expiry: int,
        max_queue_length: int,
    ) -> None:
        self.redis = client
        # The listener's writes may go through a connection of their own: one greenlet
        # uses it, so the pool's bookkeeping on every call (checkout, checks) is skipped.
        self.listener_client = client
        self.server_id = server_id
        self.queue_expiry = queue_expiry
        self.max_queue_length = max_queue_length
        self._write = client.register_script(_WRITE)
        self._claim = client.register_script(_CLAIM)
        self._recommit = client.register_script(_RECOMMIT)
        self._settle = client.register_script(_SETTLE)
        self._recover = client.register_script(_RECOVER)
        self._adopt = client.register_script(_ADOPT)
        # Scores order a server's in-flight messages; they only need to grow.
        self._score = 0
        self._score_lock = threading.Lock()

    ### Queue ###

    def append(self, uid: str, stored: str) -> list[bytes]:
        """Queue one envelope for `uid`; return the envelopes cut by `max_queue_length`."""
        writes = self.writes()
        writes.append(uid, stored)
        return writes.execute()[0]

    def queue_length(self, uid: str) -> int:
        return self.redis.llen(names.queue_key(uid))

    def claim(self, uid: str, count: int, before: int = 0, era: str = "") -> list[bytes]:
        """Move up to `count` of the oldest queued envelopes into our in-flight set.

        `before`: an event number; only messages that came before it are taken.
        """
        return self.claim_scored(uid, count, before, era)[1]

    def claim_scored(self, uid: str, count: int, before: int = 0,
                     era: str = "") -> tuple[int, list[bytes]]:
        """`claim`, and the in-flight score of the first entry taken (the others follow)."""
        start = self._next_scores(count)
        return start, self._claim(
            keys=[
                names.queue_key(uid),
                names.inflight_key(self.server_id, uid),
                names.inflight_users_key(self.server_id),
            ],
            args=[count, start, uid, before, era],
        )

    def adopt(self, uid: str, swaps: Sequence[tuple[bytes, str, int]]) -> None:
        """Replace in-flight entries by (old member, new member, score)."""
        args: list[bytes | str | int] = []
        for old, new, score in swaps:
            args += (old, new, score)
        self._adopt(keys=[names.inflight_key(self.server_id, uid)], args=args)

    def writes(self, from_listener: bool = False) -> Writes:
        """Gather queue appends and in-flight records to send in one round trip.

        `from_listener`: run on the listener's own connection (only its greenlet may).
        """
        return Writes(self, self.listener_client if from_listener else self.redis)

    ### In flight ###

    def settle(self, uid: str, stored: Iterable[str | bytes]) -> None:
        """Forget in-flight messages that were delivered."""
        self.settle_many({uid: list(stored)})

    def settle_many(self, by_uid: dict[str, list[str | bytes]]) -> None:
        """`settle` for many users in one script call."""
        keys = [names.inflight_key(self.server_id, uid) for uid in by_uid]
        args: list[str | bytes | int] = []
        for uid, members in by_uid.items():
            args += (uid, len(members), *members)
        self._settle(keys=[*keys, names.inflight_users_key(self.server_id)], args=args)

    def recommit(self, uid: str, stored: Sequence[str | bytes]) -> list[bytes]:
        """Give undelivered in-flight messages back to the head of the queue, in order."""
        # A large give-back goes in pieces, newest first, each to the head: the order
        # comes out the same, and Redis, which runs one script at a time, serves the
        # other servers' and users' calls in between.
        given: list[bytes] = []
        end = len(stored)
        while end > 0:
            start, size = end, 0
            while start > 0 and end - start < RECOMMIT_CHUNK and size < RECOMMIT_CHUNK_BYTES:
                start -= 1
                size += len(stored[start])
            given[:0] = self._recommit_for(self.server_id, uid, stored[start:end])
            end = start
        return given

    def _recommit_for(
        self, server_id: str, uid: str, stored: Sequence[str | bytes]
    ) -> list[bytes]:
        return self._recommit(
            keys=[
                names.queue_key(uid),
                names.inflight_key(server_id, uid),
                names.inflight_users_key(server_id),
            ],
            args=[self.queue_expiry, uid, *stored],
        )

    def inflight_users(self, server_id: str) -> set[str]:
        members = self.redis.smembers(names.inflight_users_key(server_id))
        # Only valid uids are ever indexed; anything else could not name a queue.
        return {uid for uid in map(names.decode, members) if names.valid_id(uid)}

    def recover(self, server_id: str, uid: str, era: str, stored: Sequence[str]) -> int:
        """Merge a dead server's in-flight messages and `stored` into `uid`'s queue, in order.

        Returns how many were given (duplicates of queued ones included). The ids of
        `stored` are remembered as merged: the other processes redo the same window.
        """
        return self._recover(
            keys=[
                names.queue_key(uid),
                names.inflight_key(server_id, uid),
                names.inflight_users_key(server_id),
                names.merged_key(uid),
            ],
            args=[self.queue_expiry, uid, era, *stored],
        )

    def merge(self, uid: str, era: str, stored: Sequence[str]) -> int:
        """Merge `stored` into `uid`'s queue in sequence order, each id once, also across
        merges of the last two minutes (`recover` without a dead server's in-flight set:
        the key it reads for one never exists). Returns how many were new."""
        return self._recover(
            keys=[names.queue_key(uid), names.inflight_key("-", uid), names.inflight_users_key("-"),
                  names.merged_key(uid)],
            args=[self.queue_expiry, uid, era, *stored],
        )

    def group_members(self, cids: Sequence[str]) -> list[set[bytes]]:
        """Each group's member set, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for cid in cids:
            pipe.smembers(names.group_members_key(cid))
        return pipe.execute()

    ### A server's marks (on the listener's connection: written as it reads) ###

    def declared_dead(self, server_id: str) -> bool:
        return bool(self.listener_client.exists(names.tombstone_key(server_id)))

    def write_checkpoint(self, server_id: str, seq: int) -> None:
        self.listener_client.set(names.checkpoint_key(server_id), seq, ex=3600)

    def checkpoint(self, server_id: str) -> int:
        """The last checkpoint `server_id` wrote (0: none, or Redis lost it)."""
        raw = self.redis.get(names.checkpoint_key(server_id))
        return int(raw) if raw else 0

    def forget_dead(self, server_id: str) -> None:
        """A dead server's work is redone: its index of users goes; its checkpoint stays
        two minutes, as the other survivors redo the window after it too."""
        self.redis.delete(names.inflight_users_key(server_id))
        self.redis.expire(names.checkpoint_key(server_id), 120)

    def _next_scores(self, count: int) -> int:
        with self._score_lock:
            first = self._score + 1
            self._score += count
        return first


class Writes:
    """Queue appends and in-flight records of a batch of messages, sent as one script."""

    def __init__(self, store: Store, client: redis.Redis) -> None:
        self.store = store
        self.client = client
        self._keys: list[str] = []
        self._args: list[str | int] = [store.queue_expiry, store.max_queue_length]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def append(self, uid: str, stored: str, untrack: bool = False) -> None:
        """Queue `stored`; `untrack`: it was recorded in flight, and leaves that set now."""
        self._keys.append(names.queue_key(uid))
        self._args += ("q", stored, names.inflight_key(self.store.server_id, uid) if untrack else "", uid)

    def track(self, uid: str, stored: str) -> None:
        self._keys.append(names.inflight_key(self.store.server_id, uid))
        self._args += ("f", stored, self.store._next_scores(1), uid)

    def execute(self) -> list[list[bytes]]:
        """Run them; for each append, in order, what `max_queue_length` cut."""
        keys = [*self._keys, names.inflight_users_key(self.store.server_id)]
        return self.store._write(keys=keys, args=self._args, client=self.client)
