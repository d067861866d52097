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

from . import lua, names

# Each move is one script (rm_flask/lua/, whose headers say why each must be atomic); the
# queue's scripts place messages by their position in the sequence (position.lua).
_WRITE = lua.script("write", after="position")
_CLAIM = lua.script("claim", after="position")
_ADOPT = lua.script("adopt")
_RECOMMIT = lua.script("recommit", after="position")
_SETTLE = lua.script("settle")
_RECOVER = lua.script("recover", after="position")

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

    def claim(self, uid: str, count: int, before: int = 0, era: str = "") -> tuple[int, list[bytes]]:
        """Move up to `count` of the oldest queued envelopes into our in-flight set; return
        the in-flight score of the first one taken (the others follow) and the envelopes.

        `before`: an event number; only messages that came before it are taken.
        """
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

    def track(self, uid: str, stored: Sequence[str]) -> None:
        """Record messages in flight, before they are written to an ack-mode socket."""
        writes = self.writes()
        for item in stored:
            writes.track(uid, item)
        writes.execute()

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

    def recover(self, server_id: str, uid: str, era: str, stored: Sequence[str],
                places: Sequence[str] = ()) -> int:
        """Merge a dead server's in-flight messages and `stored` into `uid`'s queue, in order.

        `places`: each stored message's place in the sequence (`sequence.message_id`; ""
        or none: the one its id says). Returns how many were given (duplicates of queued
        ones included). The ids of `stored` are remembered as merged: the other processes
        redo the same window.
        """
        return self._recover(
            keys=[
                names.queue_key(uid),
                names.inflight_key(server_id, uid),
                names.inflight_users_key(server_id),
                names.merged_key(uid),
            ],
            args=[self.queue_expiry, uid, era, len(stored), *stored, *_places(stored, places)],
        )

    def merge(self, uid: str, era: str, stored: Sequence[str], places: Sequence[str] = ()) -> int:
        """Merge `stored` into `uid`'s queue in sequence order, each id once, also across
        merges of the last two minutes (`recover` without a dead server's in-flight set:
        the key it reads for one never exists). `places` as in `recover`. Returns how
        many were new."""
        return self._recover(
            keys=[names.queue_key(uid), names.inflight_key("-", uid), names.inflight_users_key("-"),
                  names.merged_key(uid)],
            args=[self.queue_expiry, uid, era, len(stored), *stored, *_places(stored, places)],
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


def _places(stored: Sequence[str], places: Sequence[str]) -> list[str]:
    return list(places) if places else [""] * len(stored)
