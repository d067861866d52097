"""Redoing what another process did not do, from our own copy of the sequence.

Every process keeps, for `KEEP_RECENT` seconds, each message it read with whose work it
was (`Route.duty`): the `recent` ledger. When a process dies, the survivor that declared
it dead (and, after it, every other that reads `recovered`) queues what the dead one had
in flight and what it was to deliver or queue since its last checkpoint. When a process
was away (its subscription dropped, or it joined), the others queue what was its to do
in its window. Each id goes into a queue once, whoever merges it first (docs/cluster.md,
"Processes come and go"). Inbox entries in the window are then noted as routed by that
process (its part is done now), so that they are acknowledged without a redo.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import redis

from .cluster import Cluster, View
from .metrics import Metrics
from .retry import retrying
from .sequence import Incoming, Position, message_id
from .store import Store

log = logging.getLogger("rm_flask")

KEEP_RECENT = 30.0  # seconds of messages kept to redo the work of a server that dies
REDO_WAIT = 3.0  # seconds a redo waits at most for the server it is for to have caught up
KEEP_DOWNS = 100  # `down` events remembered until our own script's reply says we won them


class Seen(NamedTuple):
    """A message as read, kept `KEEP_RECENT` seconds to redo the work of a process that
    dies or misses it: for which user, and whose work it was (`Route.duty`)."""

    at: float  # time.monotonic()
    uid: str
    duty: str | None
    message: tuple[Any, ...]  # Incoming(*message) makes it again


class EntrySeen(NamedTuple):
    """An inbox entry as read, with its place and the servers in the view there (each
    has a part in it), kept `KEEP_RECENT` seconds like `Seen`."""

    at: float
    era: str
    seq: int
    count: int
    entry_id: str
    servers: tuple[str, ...]


class Recovery:
    """The ledger of what we read, and the redos made from it, for one process."""

    def __init__(self, me: str, store: Store, cluster: Cluster, view: View, metrics: Metrics,
                 spawn: Callable[..., Any],
                 note_routed: Callable[[str, list[str], Sequence[str]], None] = lambda *_: None) -> None:
        self.me, self.store, self.cluster, self.view = me, store, cluster, view
        self.metrics, self.spawn = metrics, spawn
        self.note_routed = note_routed  # (server, inbox entry ids, the servers at their place)
        # Plain values only: the collector skips such tuples, and there are many of them.
        self.recent: deque[Seen] = deque()
        self.entries: deque[EntrySeen] = deque()
        # The last own ping before which every message read is in Redis or delivered.
        self.checkpoint = 0
        # A `down` we published and whose event our listener has not read yet, and the
        # other way round (which comes first is a race): event number -> dead server.
        self._won: dict[int, str] = {}
        self._read_downs: dict[int, str] = {}

    def passed(self, seq: int) -> None:
        """Our ping `seq` was read and nothing read before it is held in memory: a
        survivor would redo only what came after it. Written at once: the older a dead
        server's checkpoint, the more a survivor sends again."""
        self.checkpoint = seq
        try:
            self.store.write_checkpoint(self.me, seq)
        except redis.RedisError:
            pass  # the next ping writes it

    def trim(self) -> None:
        cutoff = time.monotonic() - KEEP_RECENT
        for kept in (self.recent, self.entries):
            while kept and kept[0].at < cutoff:
                kept.popleft()

    def entry_read(self, incoming: Incoming, entry_id: str) -> None:
        """An inbox entry read at `incoming`'s place, with several servers in the view."""
        self.entries.append(EntrySeen(time.monotonic(), incoming.era, incoming.seq, incoming.count,
                                      entry_id, tuple(self.view.servers)))

    def new_era(self) -> None:
        """Event numbers start again: none we hold means anything now."""
        self.checkpoint = 0
        self._won.clear()
        self._read_downs.clear()

    def read_down(self, dead: str, down_at: int) -> None:
        """We read that `dead` was declared dead at event `down_at`: if our script did
        it, we hold every message before it now, and redo its work."""
        if self._won.pop(down_at, None) == dead:
            self.spawn(self.recover, dead, down_at)
        else:
            self._read_downs[down_at] = dead
            while len(self._read_downs) > KEEP_DOWNS:
                del self._read_downs[next(iter(self._read_downs))]

    def won(self, dead: str, down_at: int) -> None:
        """Our `down` script declared `dead` dead, at event `down_at`: redo its work once
        our listener has read up to that event (and so holds every message before it)."""
        if self._read_downs.pop(down_at, None) == dead:
            self.spawn(self.recover, dead, down_at)
        else:
            self._won[down_at] = dead

    def read_recovered(self, dead: str, by: str) -> None:
        """`by` redid `dead`'s work from its copy of the sequence, which starts when `by`
        started: one that started after the dead server's last checkpoint (the dead
        server restarted, say) holds only part of its window. We redo it from ours too."""
        down_at = next((g for g, server in self._read_downs.items() if server == dead), 0)
        if down_at and by != self.me:
            del self._read_downs[down_at]
            self.spawn(self._redo_for_dead, dead, down_at)

    def redo_gap(self, server: str, since: Position, until: int) -> None:
        """`server` received no messages after `since` until event `until` (a lost
        subscription, or joining): queue, in their places, the messages it was to
        deliver or queue meanwhile (from our own copy of the sequence); its users'
        queues drain once this is announced."""
        # Its own writes for the window first (it was slow to make them, say, retrying
        # on a connection that broke): each id is merged only where it is not queued yet.
        deadline = time.monotonic() + REDO_WAIT
        while self.view.caught_up.get(server, 0) < until and time.monotonic() < deadline:
            time.sleep(0.05)
        self._redo(server, since, until, "received no messages for a while")

    def _redo_for_dead(self, dead: str, down_at: int) -> None:
        try:
            since = self.store.checkpoint(dead)
        except redis.RedisError:
            since = 0  # from the start of what we kept: each id is merged once anyway
        self._redo(dead, (since, 0), down_at, "is gone")

    def _redo(self, server: str, since: Position, until: int, why: str) -> None:
        """Merge what `server` was to do between `since` and event `until` into the
        queues, and announce it: the users given something drain (again)."""
        try:
            era = self.view.era
            owed = self.owed_by(server, since, until, era)
            added = {uid: retrying(f"redoing for {uid}", partial(self.store.merge, uid, era, *_split(items)))
                     for uid, items in owed.items()}
            uids = sorted(uid for uid, n in added.items() if n)
            if uids:
                log.warning("Server %s %s; %d of the messages it was to handle queued again for "
                            "%d users", server, why, sum(added.values()), len(uids))
            self._note_entries(server, since, until, era)
        except Exception:
            log.exception("Could not redo what server %s missed", server)
            uids = []
        # Its users drain once this is read (they began at its `ready`); those given
        # something by a later redo than the first drain again.
        retrying(f"announcing the redo for {server}",
                 lambda: self.cluster.mark("redone", uids, drain="start", ref=server))

    def owed_by(self, server: str, since: Position, until: int, era: str) -> dict[str, list[tuple[str, str]]]:
        """From our copy of the sequence: the messages only `server` was to deliver or
        queue, after `since` (the last one it handled; (0, 0): from the start of what
        we kept) and before event `until`, each as (stored envelope, its place)."""
        owed: dict[str, list[tuple[str, str]]] = {}
        for seen in list(self.recent):
            if seen.duty != server:
                continue
            uid, incoming = seen.uid, Incoming(*seen.message)
            if incoming.era == era:
                if not (since < (incoming.seq, incoming.count) and incoming.seq < until):
                    continue
            elif since[0]:
                continue  # it had handled everything of the era before its checkpoint's
            place = message_id(incoming.era, incoming.seq, incoming.count)
            owed.setdefault(uid, []).append((incoming.message().stored, place))
        return owed

    def _note_entries(self, server: str, since: Position, until: int, era: str) -> None:
        """`server`'s part of the inbox entries in its window is queued now: note it, so
        that they are acknowledged once the others have routed theirs (or were, by us:
        `routed.lua` keeps a set), not forwarded again."""
        by_view: dict[tuple[str, ...], list[str]] = {}
        for seen in list(self.entries):
            inside = since < (seen.seq, seen.count) and seen.seq < until
            if seen.era == era and server in seen.servers and inside:
                by_view.setdefault(seen.servers, []).append(seen.entry_id)
        for servers, entry_ids in by_view.items():
            self.note_routed(server, entry_ids, servers)

    def recover(self, dead: str, down_at: int) -> None:
        """Redo what `dead` had not finished: give back its in-flight messages, and queue
        the messages it was to deliver or queue since its last checkpoint, from our own
        copy of the sequence, each in its place."""
        try:
            since = (self.store.checkpoint(dead), 0)  # everything before that ping
            owed = self.owed_by(dead, since, down_at, self.view.era)
            uids = sorted(set(owed) | self.store.inflight_users(dead))
            given = 0
            for uid in uids:
                stored, places = _split(owed.get(uid, []))
                given += retrying(f"recovering for {uid}",
                                  partial(self.store.recover, dead, uid, self.view.era, stored, places))
            self.store.forget_dead(dead)
            self._note_entries(dead, since, down_at, self.view.era)
            self.metrics.recommitted.inc(given)
            log.warning("Server %s is gone; gave %d messages (%d of them read since its last "
                        "checkpoint) back to %d queues", dead, given, sum(map(len, owed.values())), len(uids))
        except Exception:
            log.exception("Could not redo the work of dead server %s", dead)
            uids = []
        retrying(f"announcing the recovery of {dead}",
                 lambda: self.cluster.mark("recovered", uids, drain="start", ref=dead))


def _split(owed: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """(the stored envelopes, their places), for `Store.merge` and `Store.recover`."""
    return [stored for stored, _ in owed], [place for _, place in owed]
