"""Several processes on one Redis: the shared, ordered view of who is online (SPEC §5.9).

Every process subscribes to every PUBLISH, so all of them see one sequence of messages in
the same order. Changes of presence (a socket identifies or leaves, a process starts or
dies, a drain begins or ends) are PUBLISHed into that same sequence, on `rm:cluster`, by
Lua scripts that also record them in Redis. Each process replays the events into a
`View`; as every process replays the same events between the same messages, they all
reach the same decision for each message without talking to each other:

- the user has sockets and is not draining: each process holding one of them delivers to
  its own sockets; nobody queues;
- otherwise, exactly one process queues it: the user's *owner*, picked by hashing the uid
  over the processes alive at that point of the sequence.

`docs/cluster.md` walks through the steps and why they are safe, also while processes die.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import redis

from . import lua, names
from .cluster_events import (
    Down,
    Ending,
    Event,
    Off,
    On,
    Ping,
    Ready,
    Recovered,
    Redone,
    Returned,
    Sealed,
    Socket,
    Up,
)

# The scripts that change presence and publish it as an event (rm_flask/lua/; event.lua
# numbers each event in the same step as the change it announces).
_UP = lua.script("up")
_ON = lua.script("on", after="event")
_OFF = lua.script("off", after="event")
_MARK = lua.script("mark", after="event")
_COPY = lua.script("copy", after="event")
_DOWN = lua.script("down", after="event")

RECOVERY_WAIT = 10.0  # seconds drains wait at most for a dead server's work to be redone
LATER_REDO_WAIT = 1.0  # seconds drains wait for the other redos of a window once one is in
MAX_SEALS = 100_000  # a drain waits for its seal for moments; pings cover a seal forgotten


class Route(NamedTuple):
    """Who handles a message for one user, at its point of the sequence: every process
    decides the same from the same view (docs/cluster.md, the table under "The idea")."""

    queue_by: str | None  # the owner, who queues it: nobody is online, or their queue drains
    deliver_on: tuple[str, ...]  # the processes holding the user's sockets: each sends to its own
    # Whose work it is, for a survivor to redo should that process die or miss it: the
    # owner that queues, or the one process holding every socket. None when several
    # hold sockets: each delivers to its own, and the others' copies stand.
    duty: str | None

    def ours(self, me: str) -> bool:
        return self.queue_by == me or me in self.deliver_on


@dataclass
class View:
    """The cluster as the sequence of events tells it, up to the last event read.

    Every process holds one and feeds it the same events in the same order, so that
    `owner`, `sockets` and `draining` agree everywhere at each point of the sequence.
    """

    me: str
    era: str = ""
    seq: int = 0  # the last event read
    count: int = 0  # messages read since it
    synced: bool = False
    servers: list[str] = field(default_factory=list)
    sockets: dict[str, list[Socket]] = field(default_factory=dict)  # uid -> oldest first
    # uid -> (event its drain began at, the owner then, who must certify it): see `sealed`.
    draining: dict[str, tuple[int, str]] = field(default_factory=dict)
    returning: dict[str, set[str]] = field(default_factory=dict)  # uid -> servers giving back
    # (uid, event) certified by a `sealed` event, oldest first; only recent ones matter.
    seals: dict[tuple[str, int], None] = field(default_factory=dict)
    recovered: set[str] = field(default_factory=set)  # dead servers whose work was redone
    # Dead servers whose work is being redone, since when (time.monotonic()): drains wait,
    # as what the dead server held goes back into the queues.
    recovering: dict[str, float] = field(default_factory=dict)
    # server -> the processes whose redo of its window is not in yet (see `rejoined`).
    redoers: dict[str, set[str]] = field(default_factory=dict)
    # server -> an event it had read (with every message before it) when it said so last:
    # its pings say how far it has read, and a give-back is sent once its `off` was read.
    caught_up: dict[str, int] = field(default_factory=dict)
    _owners: dict[str, str] = field(default_factory=dict)

    def load(self, seq: int, era: str, servers: Iterable[str], sockets: list[bytes],
             draining: list[bytes]) -> None:
        """Take the state Redis returned with our `up` event, as of that event."""
        if era != self.era:
            # Event numbers of another era say nothing of this one.
            self.caught_up.clear()
            self.seals.clear()
        self.seq, self.count, self.era = seq, 0, era
        self.servers = sorted(servers)
        self._owners.clear()
        ordered: list[tuple[int, str, Socket]] = []
        for member, value in zip(sockets[::2], sockets[1::2], strict=True):
            server, _, sid = member.decode().partition(" ")
            order, _, uid = value.decode("utf-8", "surrogateescape").partition(" ")
            ordered.append((int(order), uid, (server, sid)))
        self.sockets = {}
        for _, uid, sock in sorted(ordered):
            self.sockets.setdefault(uid, []).append(sock)
        # Drains that began before we joined: their owners certified them to the others,
        # before us; by the time we read on, they have caught up.
        self.draining = {
            uid.decode("utf-8", "surrogateescape"): (int(g), self.me)
            for uid, g in zip(draining[::2], draining[1::2], strict=True)
        }
        self.returning.clear()
        self.synced = True

    def owner(self, uid: str) -> str:
        """The one process that queues `uid`'s messages while they have no socket.

        Rendezvous hashing: when a process joins or leaves, only the uids it wins or held
        change hands.
        """
        owner = self._owners.get(uid)
        if owner is None:
            if len(self.servers) == 1:
                return self.servers[0]
            key = uid.encode("utf-8", "surrogatepass")
            owner = max(self.servers, key=lambda s: zlib.crc32(key, zlib.crc32(s.encode())))
            if len(self._owners) > 100_000:
                self._owners.clear()
            self._owners[uid] = owner
        return owner

    def route(self, uid: str) -> Route:
        """Who queues, or delivers, a message for `uid` read now."""
        socks = self.sockets.get(uid)
        if not socks or uid in self.draining:
            # Behind a drain it keeps its place in the queue; the drain's copies reach the
            # user's sockets on the other processes.
            owner = self.owner(uid)
            return Route(owner, (), owner)
        first = socks[0][0]
        if all(server == first for server, _ in socks):
            return Route(None, (first,), first)
        return Route(None, tuple(dict.fromkeys(server for server, _ in socks)), None)

    def home(self, uid: str) -> str | None:
        """The process holding the user's oldest socket: it runs their drains."""
        socks = self.sockets.get(uid)
        return socks[0][0] if socks else None

    def apply(self, event: Event) -> None:
        """Move the view past one event."""
        self.seq, self.count = event.seq, 0
        server = event.server
        if isinstance(event, On):
            socks = self.sockets.setdefault(event.uid, [])
            for gone in event.evicted:
                if gone in socks:
                    socks.remove(gone)
            socks.append((server, event.sid))
            if event.first:
                self._begin(event.uid, event.seq)
        elif isinstance(event, Off):
            uid = event.uid
            socks = self.sockets.get(uid, [])
            if (server, event.sid) in socks:
                socks.remove((server, event.sid))
            if event.giving_back:
                self.returning.setdefault(uid, set()).add(server)
            if not socks:
                self.sockets.pop(uid, None)
                self.draining.pop(uid, None)
        elif isinstance(event, Ending):
            for uid in event.uids:
                self.draining.pop(uid, None)
        elif isinstance(event, Ping):
            self._caught_up(server, event.read)
        elif isinstance(event, Returned | Recovered | Sealed | Redone | Ready):
            if isinstance(event, Returned):
                self._caught_up(server, event.off)
                for uid in event.uids:
                    self._returned(uid, server)
            elif isinstance(event, Sealed):
                for uid in event.uids:
                    self.seals[(uid, event.before)] = None
                while len(self.seals) > MAX_SEALS:
                    del self.seals[next(iter(self.seals))]
            elif isinstance(event, Redone):
                self._redone(event.joined, server)
            elif isinstance(event, Recovered):
                self.recovered.add(event.dead)
                self.recovering.pop(event.dead, None)
            else:
                self.rejoined(server)
            for uid in event.started:
                self._begin(uid, event.seq)
        elif isinstance(event, Up):
            self.recovered.discard(server)  # declared dead, and back: it certifies again
            if server not in self.servers:
                self.servers = sorted([*self.servers, server])
                self._owners.clear()
            if event.rejoin:
                self.opened(server)
            # Sockets it put back after Redis lost them: new to a view loaded meanwhile.
            for sid, uid in event.restored:
                socks = self.sockets.setdefault(uid, [])
                if (server, sid) not in socks:
                    socks.append((server, sid))
            for uid in event.started:
                self._begin(uid, event.seq)
        elif isinstance(event, Down):
            self.recovering[server] = time.monotonic()
            self.servers = [s for s in self.servers if s != server]
            self._owners.clear()
            for uid in list(self.sockets):
                socks = [sock for sock in self.sockets[uid] if sock[0] != server]
                if socks:
                    self.sockets[uid] = socks
                else:
                    del self.sockets[uid]
                    self.draining.pop(uid, None)
            for uid in list(self.returning):
                self._returned(uid, server)
            for joined in list(self.redoers):
                self._redone(joined, server, redid=False)  # it will not redo anything now
            if len(self.servers) < 2:
                # Alone now: nobody is left to redo a window of ours, so drains wait for none.
                for key in [k for k in self.recovering if k.startswith("gap ")]:
                    del self.recovering[key]
                self.redoers.clear()
        # Copy: not the view's business.

    def opened(self, server: str) -> None:
        """`server` announced itself and receives no messages until its `ready`: what is
        its to do until then is redone after (see `rejoined`), and drains wait for that,
        so a drain that begins meanwhile cannot end before the redo is in the queue."""
        if len(self.servers) > 1:
            self.recovering[f"gap {server}"] = time.monotonic()

    def rejoined(self, server: str) -> None:
        """`server` receives messages from its `ready` on. What was its to do in its
        window, after the last message it had read (or from its `up`) to there, every
        other process that read it redoes (all of them may have been away too, after a Redis
        restart, so not one chosen). Its users (those whose sockets are all on it) drain
        from there, after the redo, so that nothing newer reaches them first: the event
        names them (`ready_users`), and drains wait for the first `redone`, or
        `RECOVERY_WAIT`."""
        if len(self.servers) > 1:
            self.recovering[f"gap {server}"] = time.monotonic()
            self.redoers[server] = set(self.servers) - {server}

    def _redone(self, joined: str, by: str, redid: bool = True) -> None:
        """`by` redid `joined`'s window (or died). The first redo in may be the one with
        the least: after a Redis restart the processes came back one after the other, and
        one that came back later read less of the window. So drains wait for every
        process that was there; the others' redos follow within moments (each waits for
        the same ping of `joined`), and one that never comes (a process that was itself
        away when `joined` said `ready`) is waited for `LATER_REDO_WAIT` at most."""
        key = f"gap {joined}"
        waiting = self.redoers.get(joined)
        if waiting is None:
            self.recovering.pop(key, None)  # we did not read its `ready`: the first redo will do
            return
        if by not in waiting:
            return
        waiting.discard(by)
        if not waiting:
            self.recovering.pop(key, None)
            del self.redoers[joined]
        elif redid and key in self.recovering:
            self.recovering[key] = min(self.recovering[key],
                                       time.monotonic() - RECOVERY_WAIT + LATER_REDO_WAIT)

    def ready_users(self, server: str) -> list[str]:
        """The users whose work in `server`'s window is redone, so who drain at its `ready`.

        Named in the event rather than found by each process on reading it: the script
        that publishes it records their drains in Redis, where a process that loads its
        view later finds them."""
        if len(self.servers) < 2:
            return []  # alone: nobody had anything of its to do
        return sorted(uid for uid, socks in self.sockets.items()
                      if socks and all(s == server for s, _ in socks))

    def digest(self) -> str:
        """A short hash of who is where: equal in every process that has read the same
        events (the tests compare them once traffic stops)."""
        state = [self.era, self.servers, sorted(self.sockets.items()), sorted(self.draining)]
        return hashlib.sha1(json.dumps(state).encode("utf-8", "surrogatepass")).hexdigest()[:12]

    def new_era(self, first: int, era: str) -> None:
        """Redis lost its data, and event numbers start again at `first`: the view as it
        stands carries over (every process read the same sequence up to here, and each
        puts its own sockets back), renumbered. Certificates of how far a server read
        count in the new numbers only, and drains wait for them anew."""
        self.seq, self.count, self.era = first - 1, 0, era
        self.caught_up.clear()
        self.seals.clear()
        self.draining = {uid: (first, owner) for uid, (_, owner) in self.draining.items()}

    def _begin(self, uid: str, seq: int) -> None:
        self.draining[uid] = (seq, self.owner(uid))

    def sealed(self, uid: str, seq: int, sealer: str) -> bool:
        """Has `sealer` queued every message for `uid` that came before event `seq`?

        The owner queues while a user drains, from its own copy of the sequence, which
        may lag ours: a drain may not start (or end) before its owner caught up.
        """
        return (sealer == self.me or (uid, seq) in self.seals or sealer in self.recovered
                or self.caught_up.get(sealer, 0) >= seq)

    def redoing(self) -> bool:
        """Is a dead server's work being redone? (Not for ever, should the survivor
        that does it die too.)"""
        cutoff = time.monotonic() - RECOVERY_WAIT
        for server, since in list(self.recovering.items()):
            if since < cutoff:
                del self.recovering[server]
                if server.startswith("gap "):
                    self.redoers.pop(server[4:], None)
        return bool(self.recovering)

    def _caught_up(self, server: str, seq: int) -> None:
        # A number past the event being read is of an earlier era: it proves nothing now.
        if self.caught_up.get(server, 0) < seq <= self.seq:
            self.caught_up[server] = seq

    def _returned(self, uid: str, server: str) -> None:
        servers = self.returning.get(uid)
        if servers is not None:
            servers.discard(server)
            if not servers:
                del self.returning[uid]


class Cluster:
    """The scripts that change presence and announce it, for one process."""

    def __init__(self, client: redis.Redis, server_id: str,
                 admit_client: redis.Redis | None = None) -> None:
        self.redis = client
        self.admit_client = admit_client or client  # where `on` runs
        self.server_id = server_id
        self._up = client.register_script(_UP)
        self._on = client.register_script(_ON)
        self._off = client.register_script(_OFF)
        self._mark = client.register_script(_MARK)
        self._down = client.register_script(_DOWN)
        self._copy = client.register_script(_COPY)
        self._head = [names.CLUSTER_SEQ_KEY, names.CLUSTER_CHANNEL]

    def up(self, own: Iterable[tuple[str, str]], heartbeat: str, ttl: int,
           rejoin: bool = True) -> list[Any]:
        """Join: returns [event number, era, servers, sockets, draining] as of our event.
        `rejoin`: we were not subscribed until now, and publish `ready` once we are."""
        args: list[str | int] = [self.server_id, os.urandom(2).hex(), heartbeat, ttl, int(rejoin)]
        for sid, uid in own:
            args += (sid, uid)
        return self._up(
            keys=[*self._head, names.SERVERS_KEY, names.SOCKETS_KEY, names.DRAINING_KEY,
                  names.CLUSTER_ERA_KEY, names.USER_SOCKETS_PREFIX,
                  names.server_key(self.server_id), names.tombstone_key(self.server_id)],
            args=args,
        )

    def on(self, sid: str, uid: str, limit: int) -> int:
        return self._on(
            keys=[*self._head, names.SOCKETS_KEY, names.user_sockets_key(uid), names.DRAINING_KEY],
            args=[self.server_id, sid, uid, limit],
            client=self.admit_client,
        )

    def off(self, sid: str, uid: str, giving_back: bool) -> int:
        return self._off(
            keys=[*self._head, names.SOCKETS_KEY, names.user_sockets_key(uid), names.DRAINING_KEY],
            args=[self.server_id, sid, uid, int(giving_back)],
        )

    def mark(self, kind: str, uids: Iterable[str] = (), drain: str = "", ref: int | str = 0) -> int:
        """Publish `kind` for `uids`; `drain`: "start" (if they have sockets) or "end"."""
        uids = list(uids)
        return self._mark(
            keys=[*self._head, names.DRAINING_KEY, *map(names.user_sockets_key, uids)],
            args=[kind, self.server_id, drain, ref, *uids],
        )

    def copy(self, uid: str, stored: Iterable[str], over: bool = False, to: str = "") -> int:
        """Send what a drain sent to the user's sockets on the other processes (`to`: to
        that one only)."""
        return self._copy(keys=self._head, args=[self.server_id, uid, int(over), to, *stored])

    def down(self, server_id: str) -> int:
        """Declare `server_id` dead; the event number if we were first, else 0."""
        return self._down(
            keys=[*self._head, names.SERVERS_KEY, names.SOCKETS_KEY, names.DRAINING_KEY,
                  names.tombstone_key(server_id)],
            args=[server_id, names.USER_SOCKETS_PREFIX],
        )
