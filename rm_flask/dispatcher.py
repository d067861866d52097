"""The listener's other end: for each message read, which sockets get it now and what
waits in Redis (SPEC §5); for each cluster event, what this process does.

`route_batch` takes PUBLISHes and the cluster's events between them, in Redis's order.
Each message is decided by `View.route` (the same in every process at that point of the
sequence) and `router.decide` (what this process does with its part), under the user's
lock, which keeps the queue, the drain and live delivery in one order in this process;
the writes go to Redis in one round trip, then `delivery` sends. Each event moves the
view, then its handler here starts drains (`drain.py`), gives back what a socket held
(`sessions.py`), or redoes a dead process's work (`recovery.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import redis

from . import cluster_events, envelope, inbox, names
from .acks import Settler
from .cluster import RECOVERY_WAIT, Cluster, Route, View
from .cluster_events import (
    Copy,
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
    Up,
)
from .delivery import Delivery
from .drain import Drains
from .envelope import Message
from .listener import SUBSCRIBED_HERE
from .metrics import Metrics, observe_many
from .recovery import Recovery, Seen
from .registry import Conn, Phase, Registry, User
from .retry import retrying
from .router import Action, decide
from .sequence import Incoming, Position, tail_count
from .sessions import Sessions
from .store import Store
from .transport import Transport

log = logging.getLogger("rm_flask")

# Seconds a socket that joined waits for the other processes' replays before it is sent
# what is newer anyway (they read its `on` when we did: only a paused or failing one
# takes longer). For a process declared dead meanwhile, it waits instead for the redo
# of that process's work, `RECOVERY_WAIT` at most (`_recovered_for_joined`).
REPLAY_WITHIN = 3.0
SUSPENDED_AFTER = 8.0  # seconds without housekeeping after which we ask whether we were declared dead


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class Hooks:
    """What the dispatcher asks of the process it runs in (`Service`)."""

    synced: Callable[[], None] = _nothing  # our view is loaded: subscribe to the apps' channels
    pong: Callable[[], None] = _nothing  # our own ping came back through the subscription
    declared_dead: Callable[[], None] = _nothing  # the others declared us dead: rejoin
    # Redis lost its data: announce this process again; returns what `Cluster.up` does.
    new_era: Callable[[], list[Any]] = list
    suspect: Callable[[], None] = _nothing  # a server may be dead: look for it now
    # A server (we, or one whose part we redid) routed its part of inbox entries (queued
    # or written); the servers in the view at their place, the last of which to note its
    # part acknowledges them (none: only noted).
    inbox_routed: Callable[[str, list[str], Sequence[str]], None] = lambda server, entry_ids, servers: None


@dataclass(frozen=True)
class Joining:
    """What our `up` script returned: the cluster as of its event."""

    seq: int  # the `up` event's number
    read: Position  # the last message we had read before, in era `was` ((0, 0): none)
    was: str
    era: str
    servers: list[str]
    sockets: list[bytes]
    draining: list[bytes]


class Dispatcher:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        transport: Transport,
        metrics: Metrics,
        spawn: Callable[..., Any],
        cluster: Cluster,
        drain_batch: int = 100,
        ack_timeout: float = 30,
        max_payload: int = 1024 * 1024,
        hooks: Hooks = Hooks(),
    ) -> None:
        self.hooks = hooks
        self.store = store
        self.spawn = spawn
        self.registry = registry
        self.transport = transport
        self.metrics = metrics
        self.cluster = cluster
        self.me = cluster.server_id
        self.view = View(self.me)
        self.max_payload = max_payload
        self.settler = Settler(store)
        self.delivery = Delivery(self.me, self.view, registry, transport, metrics, self.settler, store.track)
        self.sessions = Sessions(self.view, registry, store, cluster, transport, metrics, self.settler,
                                 suspect=hooks.suspect, ack_timeout=ack_timeout)
        # What our `up` returned, until its event comes through the subscription.
        self._joining: Joining | None = None
        # Where our window began (see `View.rejoined`): the last message we had read
        # before losing the subscription, or our `up`. Our `ready` says it.
        self.window_from: Position = (0, 0)
        self.recovery = Recovery(self.me, store, cluster, self.view, metrics, spawn, hooks.inbox_routed)
        self.drains = Drains(
            self.me, registry, self.view, store, cluster, metrics, spawn,
            send=self.delivery.send, bubble=self.delivery.bubble, copy_drained=self._copy_drained,
            recommit=self.sessions.recommit, settle=self.settler.settle,
            drop_unresponsive=self.sessions.drop_unresponsive,
            drain_batch=drain_batch, ack_timeout=ack_timeout,
        )
        # What each kind of cluster event does here, after the view has taken it in
        # (docs/cluster.md names the scripts that publish each).
        self._handlers: dict[type[Event], Callable[[Any, dict[str, str | None]], None]] = {
            Ping: self._on_ping, Up: self._on_up, On: self._on_on, Off: self._on_off,
            Down: self._on_down, Ending: self._on_ending, Copy: self._on_copy,
            Sealed: self._on_sealed, Returned: self._on_returned, Ready: self._on_ready,
            Redone: self._on_redone, Recovered: self._on_recovered,
        }
        # server -> when we last read an event it published: a live server pings each
        # second, so silence is evidence of death that survives Redis losing its data.
        self.heard: dict[str, float] = {}
        self.synced_at = time.monotonic()  # when our view was last loaded
        # When our housekeeping last ran: long ago means the process was paused, and may
        # have been declared dead meanwhile. Then, until we read our own `down`, nothing
        # we read is ours (`_given_up`).
        self.alive_at = time.monotonic()
        self._given_up = False
        # Just subscribed to the apps' channels: the messages read until the next event
        # are the tail of its segment, after some we missed; how many, we cannot know.
        self._tail = False
        # Subscribed again, and our `ready` not read yet: what we missed before goes into
        # our users' queues (the others redo it), so what we read now goes behind it.
        self._opening = False
        # Ids of the messages the run being routed left in memory here (held behind a
        # drain, kept for a socket leaving): their inbox entries are not routed yet.
        self._in_memory: set[str] = set()
        self._routed_here = inbox.RoutedHere()

    ### Joining the cluster ###

    def joining(self, snapshot: list[Any], read: Position = (0, 0), was: str = "") -> None:
        """Our `up` ran; `snapshot` is the cluster as of its event, which comes next.
        `read`: the last message we had read before, of era `was` ((0, 0): none): the
        others redo only what came after it, so what we handled is not sent twice.

        Until we read that event we are not subscribed to the apps' channels (a message
        read with no view true for it could not be decided alike everywhere); what was
        ours to do until our `ready`, the others redo.
        """
        seq, era, servers, sockets, draining = snapshot
        self._routed_here.forget()
        self._joining = Joining(int(seq), read, was, era.decode(),
                                [s.decode() for s in servers], sockets, draining)
        self.view.synced = False

    def last_read(self) -> Position:
        """The last message we read: the others redo what we missed after it. In a tail
        we do not know its place; the start of its segment is before it."""
        return (self.view.seq, 0 if self._tail else self.view.count)

    def own_sockets(self) -> list[tuple[str, str]]:
        """Our identified sockets, oldest first: put back in Redis if Redis lost them."""
        conns = sorted(self.registry.conns.values(), key=lambda c: c.connected_at)
        return [(c.sid, c.announced) for c in conns if c.announced is not None]

    ### From Redis ###

    def route_batch(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Deliver or queue PUBLISHes, and follow the cluster's events, in the order Redis
        sent them; never raises.

        The messages between two events go together: their Redis writes (queue appends,
        in-flight records) in one round trip, before anything is sent.
        """
        run: list[Incoming] = []
        received = 0
        entries: list[str] = []  # inbox entries in `run`
        routed: list[tuple[list[str], tuple[str, ...]]] = []  # and those routed, by view
        ours_redone: list[str] = []  # inbox entries whose part the others redo
        again: list[str] = []  # inbox entries forwarded again whose part we did already
        if time.monotonic() - self.alive_at > SUSPENDED_AFTER and not self._given_up:
            self._check_declared_dead()
        for channel, data in items:
            if channel == SUBSCRIBED_HERE:
                self._tail = self._opening = True
            elif channel == names.CLUSTER_CHANNEL:
                self._tail = False
                if run:
                    self._route_run(run, entries, routed)
                    run, entries = [], []
                if again:
                    routed.append((again, tuple(self.view.servers)))
                    again = []
                # Noted before the event: our ping's checkpoint says a survivor need not
                # redo what came before it, nor note our part of it.
                self._note_routed(routed)
                try:
                    self._event(cluster_events.parse(data))
                except Exception:
                    log.exception("Failed to follow cluster event %r", data[:200])
            elif channel == names.INBOX_CHANNEL:
                received += 1
                entry = inbox.unframe(data)
                if entry is None:
                    log.warning("Ignoring message on %s: not a forwarded inbox entry", channel)
                    self.metrics.invalid.labels("channel").inc()
                    continue
                entry_id, target, payload = entry
                incoming = self._incoming(target, payload, inbox.envelope_id(entry_id))
                if incoming is None:
                    ours_redone.append(entry_id)
                elif entry_id in self._routed_here:
                    # Forwarded again for another server's part: ours is queued or
                    # written. Said again, in case saying so was what failed.
                    again.append(entry_id)
                else:
                    run.append(incoming)
                    entries.append(entry_id)
                    if len(self.view.servers) > 1:
                        self.recovery.entry_read(incoming, entry_id)
            else:
                received += 1
                incoming = self._incoming(channel, data)
                if incoming is not None:
                    run.append(incoming)
        self.metrics.received.inc(received)
        if run:
            self._route_run(run, entries, routed)
        if again:
            routed.append((again, tuple(self.view.servers)))
        self._note_routed(routed)
        if ours_redone:
            self.hooks.inbox_routed(self.me, ours_redone, ())

    def _note_routed(self, routed: list[tuple[list[str], tuple[str, ...]]]) -> None:
        for done, servers in routed:
            self._routed_here.add(done)
            self.hooks.inbox_routed(self.me, done, servers)
        routed.clear()

    def _check_declared_dead(self) -> None:
        """We were not running for a while (the process was paused): if the others
        declared us dead meanwhile, they redid our work up to their `down`, so what we
        read until we reach that event is no longer ours to handle."""
        try:
            self._given_up = self.store.declared_dead(self.me)
        except redis.RedisError:
            return
        if self._given_up:
            log.error("This server was declared dead while it was not running; leaving what "
                      "it reads to the others until it rejoins")

    def _incoming(self, channel: str, data: bytes, msg_id: str | None = None) -> Incoming | None:
        view = self.view
        if self._given_up:
            return None
        if view.synced:
            view.count += 1
            # Counted from where we came in, a message of the tail would take the id of
            # an earlier one that the others hold: it gets one of its own, placed after
            # every message of its segment, where it is.
            count = tail_count(self.me, view.count) if self._tail else view.count
            return Incoming(channel, data, view.era, view.seq, count, msg_id=msg_id)
        # Not subscribed to it yet, or still to read our `up` after being declared dead:
        # until our `ready`, the others redo what was ours.
        return None

    def _route_run(self, run: list[Incoming], entries: list[str],
                   routed: list[tuple[list[str], tuple[str, ...]]]) -> None:
        """Route a run; note its inbox `entries` whose part is now queued or written here,
        with the servers in the view at their place (each of them has a part)."""
        servers = tuple(self.view.servers)
        self._in_memory.clear()
        if self._route(run) and entries:
            done = [e for e in entries if inbox.envelope_id(e) not in self._in_memory]
            if done:
                routed.append((done, servers))

    def _route(self, run: list[Incoming]) -> bool:
        """Route a run of messages; False if they could not be (logged)."""
        started = time.perf_counter()
        try:
            handled = self._deliver(self._plan(run))
            observe_many(self.metrics.latency, time.perf_counter() - started, handled)
            return True
        except Exception:
            # Not a connection error (those are retried until Redis is back): Redis said
            # no, for example out of memory. Say so loudly; the listener goes on. (Inbox
            # entries among them stay unacknowledged, and are forwarded again.)
            log.exception("Failed to route %d messages; they are lost", len(run))
            self.metrics.failed.inc(len(run))
            return False

    def _plan(self, run: list[Incoming]) -> list[tuple[str, Incoming]]:
        """(uid, message) for each message and each user it is for (groups expanded)."""
        accepted: list[tuple[tuple[str, str], Incoming]] = []
        for incoming in run:
            target = self._accept(incoming.channel, incoming.data)
            if target is not None:
                accepted.append((target, incoming))
        groups = {ident for (kind, ident), _ in accepted if kind == "group"}
        members = self._members(groups) if groups else {}
        plan: list[tuple[str, Incoming]] = []
        for (kind, ident), incoming in accepted:
            if kind == "user":
                plan.append((ident, incoming))
            else:
                plan.extend((uid, incoming) for uid in members[ident])
        return plan

    def _accept(self, channel: str, data: bytes) -> tuple[str, str] | None:
        target = names.parse_channel(channel)
        if target is None:
            log.warning("Ignoring message on %s: not a user or group channel with a valid id",
                        names.printable(channel))
            self.metrics.invalid.labels("channel").inc()
            return None
        if len(data) > self.max_payload:
            log.warning("Dropping message on %s: %d bytes is over max_payload (%d)",
                        channel, len(data), self.max_payload)
            self.metrics.invalid.labels("too_large").inc()
            return None
        log.info("New message from channel %s", channel)
        return target

    def _members(self, groups: set[str]) -> dict[str, list[str]]:
        order = sorted(groups)
        members: dict[str, list[str]] = {}
        read = retrying("reading group members", partial(self.store.group_members, order))
        for cid, raw in zip(order, read, strict=True):
            uids = []
            for item in sorted(raw):
                uid = names.decode(item)
                if names.valid_id(uid):
                    uids.append(uid)
                else:
                    log.warning("Group %s has an invalid member %s; skipped", cid, names.printable(uid, 80))
            members[cid] = uids
        return members

    def _deliver(self, plan: list[tuple[str, Incoming]]) -> int:
        """Send each (uid, message) to the user's sockets here, or queue it (SPEC §5 1-2);
        return how many of them this server handled.

        The uids' locks are held from the decision until the message is written or
        queued, so that an identify cannot slip in between and miss it.
        """
        view, me = self.view, self.me
        # With other servers, remember what each message was whose to handle, to redo it
        # should they die; and look only at what is ours.
        recent = self.recovery.recent if len(view.servers) > 1 else None
        now = time.monotonic()
        ours: list[tuple[str, Incoming, Route]] = []
        for uid, incoming in plan:
            route = view.route(uid)
            if recent is not None:
                recent.append(Seen(now, uid, route.duty, incoming.fields()))
            if route.ours(me):
                ours.append((uid, incoming, route))
        if not ours:
            return 0
        opening = self._opening and len(view.servers) > 1
        stripes = map(self.registry.user_lock, (uid for uid, _, _ in ours))
        locks = list({id(lock): lock for lock in stripes}.values())
        for lock in locks:
            lock.acquire()
        try:
            writes = self.store.writes(from_listener=True)
            sends: list[tuple[User, Message, bool, str | None]] = []
            queued: list[str] = []
            for uid, incoming, route in ours:
                # Queued by its owner: neither the user's phase here nor their tabs matter.
                user = self.registry.user(uid) if route.queue_by is None else None
                live = user.live() if user is not None else []
                action = decide(route, me, opening=opening, holds=user is not None and user.phase.holds,
                                live=bool(live))
                if action is Action.NOTHING:
                    continue
                if action is Action.QUEUE:
                    if not view.sockets.get(uid):
                        log.info("Client is not online, queueing message in Redis (%s)",
                                 names.queue_key(uid))
                    writes.append(uid, incoming.message().stored)
                    queued.append(uid)
                    continue
                user = user or self.registry.hold(uid)
                if action is Action.HOLD:
                    user.held.append(self._kept(incoming.message()))
                elif action is Action.KEEP:
                    user.leftover.append(self._kept(incoming.message()))
                else:
                    msg = incoming.message()
                    # With only ack-mode sockets, a message is delivered once acknowledged,
                    # so it is recorded in flight before it is sent; written to a socket
                    # that does not acknowledge, it is delivered.
                    acked_only = all(c.ack for c in live)
                    if acked_only:
                        writes.track(uid, msg.stored)
                    sends.append((user, msg, acked_only, self.delivery.bubble(uid)))
            cut = retrying("writing to Redis", writes.execute) if writes else []
            for uid, dropped in zip(queued, cut, strict=True):
                self.metrics.queued.inc()
                for raw in dropped:
                    self.metrics.trimmed.inc()
                    log.warning("%s: queue is over max_queue_length, dropping its oldest message '%s'",
                                uid, envelope.preview_stored(raw))
            for user, msg, acked_only, bubble in sends:
                try:
                    sent = user.live() and self.delivery.send(user, msg, acked_only, bubble)
                except Exception:
                    # Queued or recorded in flight already, so not lost; but a user who
                    # stays online would wait for it for ever: give it back at once.
                    log.exception("%s: could not send a message; giving it back", user.uid)
                    user.leftover.append(self._kept(msg))
                    self.spawn(self.sessions.return_leftover, user.uid)
                    continue
                if not sent:
                    # Its last socket was cut off earlier in this batch: given back with
                    # what that socket held, behind it.
                    user.leftover.append(self._kept(msg))
        finally:
            for lock in reversed(locks):
                lock.release()
        return len(ours)

    def _kept(self, msg: Message) -> Message:
        """`msg` is held in memory for now: not routed yet, as an inbox entry goes."""
        self._in_memory.add(msg.id)
        return msg

    ### The cluster's events ###

    def _event(self, event: Event) -> None:
        view = self.view
        if not view.synced:
            joining = self._joining
            if joining is not None and event.seq == joining.seq:
                view.load(joining.seq, joining.era, joining.servers, joining.sockets, joining.draining)
                self.window_from = (joining.read if joining.read[0] and joining.was == view.era
                                    else (joining.seq, 0))
                view.opened(self.me)  # as the others did on reading our `up`
                self._joining = None
                log.info("Joined %d server(s) on this Redis: %s", len(view.servers), ", ".join(view.servers))
                self.synced_at = time.monotonic()
                self._loaded()
                self.hooks.synced()
            return  # events before our `up` are in the state it returned
        if event.seq <= view.seq:
            self._new_era(event.seq)
        if not isinstance(event, Down):
            self.heard[event.server] = time.monotonic()
        if not isinstance(event, Ping):
            log.debug("Cluster event %s", event)
        homes = self._homes_of(event) if isinstance(event, Off | Down) else {}
        view.apply(event)
        self._handlers[type(event)](event, homes)

    def _new_era(self, first: int) -> None:
        """The numbers started again at event `first`: Redis lost its data (a restart
        without persistence, FLUSHALL). Every process reads this same event as the first
        of the new era, with the same view: each keeps it, puts its own sockets and
        in-flight records back, and goes on. Messages are decided from the view at once,
        by every process alike, with ids of the new era."""
        log.warning("Redis lost the cluster's state; a new era: announcing this server, its "
                    "sockets and what it has in flight again")
        snapshot = self.hooks.new_era()
        self._routed_here.forget()
        self.view.new_era(first, snapshot[1].decode())
        self.recovery.new_era()
        writes = self.store.writes(from_listener=True)
        for user in list(self.registry.users.values()):
            with self.registry.user_lock(user.uid):
                if user.end is not None:
                    user.end = (first, user.end[1])
                for pending in user.pending.values():
                    writes.track(user.uid, pending.message.stored)
        if writes:
            retrying("recording what is in flight again", writes.execute)

    def _loaded(self) -> None:
        """Act on the state we joined with as if we had read it happen: after a lost
        subscription, the events we missed."""
        view = self.view
        for conn in sorted(self.registry.conns.values(), key=lambda c: c.connected_at):
            uid = conn.announced
            if uid is not None and conn.uid is None and (self.me, conn.sid) in view.sockets.get(uid, ()):
                with self.registry.user_lock(uid):
                    self.registry.join(conn, uid)
        for user in list(self.registry.users.values()):
            for sid in list(user.leaving):
                if (self.me, sid) not in view.sockets.get(user.uid, ()):
                    self.spawn(self.sessions.give_back, user.uid, sid, view.seq)
            if user.phase.holds and user.end is None:
                user.end = (view.seq, self.me)  # its end is behind us
            user.drain_wakeup.set()
        for uid in list(view.draining):
            if view.home(uid) == self.me:
                self.drains.start(uid)

    def _homes_of(self, event: Off | Down) -> dict[str, str | None]:
        """Where the drains of the users an event concerns run now, to see them move."""
        view = self.view
        if isinstance(event, Off):
            return {event.uid: view.home(event.uid)}
        server = event.server
        return {uid: socks[0][0] for uid, socks in view.sockets.items() if any(s == server for s, _ in socks)}

    def _on_ping(self, event: Ping, _: Any) -> None:
        if event.server != self.me:
            return
        self.hooks.pong()
        # Everything read before our ping is delivered or in Redis, unless held here.
        if not any(u.held or u.leftover for u in list(self.registry.users.values())):
            self.recovery.passed(event.seq)
        self.recovery.trim()

    def _on_up(self, event: Up, _: Any) -> None:
        server = event.server
        if server != self.me:
            log.info("Server %s joined; %d on this Redis", server, len(self.view.servers))
        for uid in event.started:
            self._began(uid, event.seq)

    def _on_on(self, event: On, _: Any) -> None:
        uid = event.uid
        for server, sid in event.evicted:
            old = self.registry.get(sid) if server == self.me else None
            if old is not None:
                log.info("%s: more than %d sockets open, closing the oldest (%s)",
                         uid, self.registry.user_conn_limit, old.address)
                self.transport.disconnect(old)
        # Every process reads this event at the same point, with the same view: which
        # other processes hold the user's sockets (each replays to this one what they
        # hold for the user) is known alike to them and to the tab's.
        others = {server for server, _ in self.view.sockets.get(uid, ()) if server != event.server}
        if event.server == self.me:
            conn = self.registry.get(event.sid)
            if conn is not None and conn.announced == uid and conn.uid is None:
                with self.registry.user_lock(uid):
                    user = self.registry.join(conn, uid)
                    # What the others' replays hold is older than what we send it now.
                    conn.awaiting, conn.awaiting_since = others, time.monotonic()
                    # With `first`, a drain begins here, and what a tab that left kept is
                    # given back to the queue, which the drain waits for. The queue may
                    # also hold what that tab's drain had not sent yet, older than what
                    # it kept: replayed, the kept messages came first.
                    if not event.first:
                        if (user.interrupted and user.phase is Phase.IDLE
                                and self.view.home(uid) == self.me):
                            self.drains.resume(user)
                        self.delivery.replay(user, conn)
                    elif user.leftover and uid not in self.view.returning:
                        self.spawn(self.sessions.return_leftover, uid)
        elif self.me in others:
            # Sent even when empty: that tab takes nothing until it has it. What our tabs
            # hold unacknowledged would otherwise reach it only if they leave (given
            # back, through the queue), after newer messages.
            with self.registry.user_lock(uid):
                user = self.registry.user(uid)
                owed = self.delivery.owed_to_new_tab(user) if user is not None else []
                self._copy_drained(uid, owed, to=event.sid)
        if event.first:
            self._began(uid, event.seq)
        elif event.server == self.me and uid in self.view.draining and self.view.home(uid) == self.me:
            # The tab whose `on` began the drain here may have left before we read it:
            # with no socket to send to, the drain did not start, and nothing else starts
            # it while the view says it runs (3 processes, 40 FIN-churning tabs: a queue
            # of 40-236 stuck for a user online in 4 of 15 runs).
            self.drains.start(uid)

    def _began(self, uid: str, seq: int) -> None:
        """A drain of `uid` began at event `seq`: the owner certifies, the home drains."""
        home = self.view.home(uid)
        if self.view.owner(uid) == self.me and home != self.me:
            self._seal(uid, seq)
        if home == self.me:
            self.drains.start(uid)

    def _seal(self, uid: str, seq: int) -> None:
        # Every message before `seq` was read, and queued if it was ours to queue.
        retrying(f"certifying the queue of {uid}", lambda: self.cluster.mark("sealed", [uid], ref=seq))

    def _on_off(self, event: Off, homes: dict[str, str | None]) -> None:
        uid = event.uid
        if event.server == self.me:
            self.spawn(self.sessions.give_back, uid, event.sid, event.seq)
        self._moved(homes)

    def _on_down(self, event: Down, homes: dict[str, str | None]) -> None:
        dead = event.server
        if dead == self.me:
            log.error("Other servers declared this one dead (its heartbeat lapsed); rejoining")
            self._given_up = False
            self.hooks.declared_dead()
            return
        log.warning("Server %s is gone; %d left on this Redis", dead, len(self.view.servers))
        # Sockets awaiting its replay wait on, for the redo of its work (`recovered`):
        # what it held comes back through the queue, and what was sent to them meanwhile
        # is newer.
        self._moved(homes)
        self.recovery.read_down(dead, event.seq)

    def _moved(self, homes: dict[str, str | None]) -> None:
        """Users whose oldest socket changed server mid-drain: the new home drains on
        (also the end of one, which its tabs here were waiting for)."""
        for uid, before in homes.items():
            user = self.registry.user(uid)
            if self.view.home(uid) == self.me != before:
                if uid in self.view.draining or (user is not None and user.phase.holds):
                    self.drains.start(uid)

    def _on_ending(self, event: Ending, _: Any) -> None:
        for uid in event.uids:
            owner, home = self.view.owner(uid), self.view.home(uid)
            user = self.registry.user(uid)
            # Ours when we are the home; also when the user has no socket left anywhere
            # and our drain is ending: its tab went before this was read, and a tab that
            # comes back here finds the drain still ending, which must know its end or
            # it waits for ever (the queue given back meanwhile never drained).
            ours = home == self.me or (home is None and user is not None and user.phase is Phase.ENDING)
            if ours:
                if user is not None:
                    user.end = (event.seq, owner)
                    user.drain_wakeup.set()
                continue
            if owner == self.me and home is not None:
                self._seal(uid, event.seq)
            if user is not None and user.live() and home is not None:
                # The last of the queue reaches our tabs as copies from the home: what
                # comes live meanwhile waits for the last copy (or for the drain to move
                # here, which then sends the rest itself).
                with self.registry.user_lock(uid):
                    user.hold((event.seq, owner))

    def _on_copy(self, event: Copy, _: Any) -> None:
        """The home of a user's drain sent these to its sockets (ours get them too), or
        another process replays to a socket here that joined what it held for the user."""
        uid = event.uid
        user = self.registry.user(uid) if event.server != self.me else None
        if user is None:
            return
        channel = names.user_channel(uid)
        messages = [Message.from_queue(raw.encode("utf-8", "surrogateescape"), channel)[0]
                    for raw in event.messages]
        with self.registry.user_lock(uid):
            if event.to:
                for conn in [c for c in user.live() if c.sid == event.to]:
                    self._replayed(conn, event.server, messages)
            else:
                bubble = self.delivery.bubble(uid)
                for conn in [c for c in user.live() if event.server not in c.awaiting]:
                    for msg in messages:
                        self.delivery.write(user, conn, msg, conn.sid == bubble)
            if event.over and user.phase is Phase.FOLLOWING:
                self.drains.release_held(user)
                if user.leftover and not user.live():
                    self.spawn(self.sessions.return_leftover, uid)

    def _replayed(self, conn: Conn, server: str, messages: Iterable[Message]) -> None:
        """`server`'s replay to a socket that joined is in (or `server` is gone)."""
        uid = conn.uid
        user = self.registry.user(uid) if uid is not None else None
        if user is None:
            return
        with self.registry.user_lock(uid):
            conn.replayed.extend(messages)
            conn.awaiting.discard(server)
            if not conn.awaiting:
                self.delivery.caught_up(user, conn)

    def replays_overdue(self) -> None:
        """Sockets that waited `REPLAY_WITHIN` for a replay (its process paused, or Redis
        refused it) wait no longer: what it held comes through the queue if it is lost.
        For a process declared dead, whose work is being redone, `RECOVERY_WAIT` after
        its `down` (its redo's winner died too, say)."""
        now = time.monotonic()

        def overdue(conn: Conn, server: str) -> bool:
            down_at = self.view.recovering.get(server)
            if down_at is not None:
                return now - down_at > RECOVERY_WAIT
            return now - conn.awaiting_since > REPLAY_WITHIN

        for conn in list(self.registry.conns.values()):
            late = [server for server in conn.awaiting if overdue(conn, server)]
            if late:
                log.warning("%s: socket %s had no replay from %s in time; sending on",
                            conn.uid, conn.address, ", ".join(sorted(late)))
                for server in late:
                    self._replayed(conn, server, ())

    def _recovered_for_joined(self, dead: str, drained: set[str]) -> None:
        """`dead`'s work was redone: the sockets that awaited its replay stop waiting.
        Where the redo queued something for the user, a drain begins at this event, and
        what was sent to the socket meanwhile (newer than what the dead process held, but
        not all newer than what the redo queued) goes back to the queue first, so that
        the drain sends all of it in sequence order. Before the drain begins: it must
        find them queued."""
        for conn in [c for c in list(self.registry.conns.values()) if dead in c.awaiting]:
            uid = conn.uid
            user = self.registry.user(uid) if uid is not None else None
            if user is None:
                continue
            if uid not in drained:
                self._replayed(conn, dead, ())  # nothing of its comes: send on
                continue
            with self.registry.user_lock(uid):
                given = conn.replayed + conn.held_writes
                try:
                    # Given back from our in-flight set, before the drain claims them.
                    self.sessions.recommit(uid, given)
                except Exception:
                    log.exception("%s: could not queue %d messages to send them in order; "
                                  "sending them now", uid, len(given))
                    self._replayed(conn, dead, ())  # late, but each one
                    continue
                for msg in conn.held_writes:
                    pending = user.pending.get(msg.id)
                    if pending is not None:
                        pending.waiting.discard(conn.sid)  # never written to it
                        if not pending.waiting:
                            del user.pending[msg.id]
                conn.replayed, conn.held_writes = [], []
                conn.awaiting.discard(dead)
                if not conn.awaiting:
                    self.delivery.caught_up(user, conn)

    def _copy_drained(self, uid: str, messages: list[Message], over: bool = False, to: str = "") -> None:
        """Send what our drain sent to the user's sockets on other processes, if any (a
        replay, `to` one socket, is sent even empty: that socket waits for it)."""
        socks = self.view.sockets.get(uid, ())
        if any(server != self.me for server, _ in socks) and (messages or over or to):
            retrying(f"copying the drain of {uid}",
                     partial(self.cluster.copy, uid, [m.stored for m in messages], over, to))

    def _on_sealed(self, event: Sealed, _: Any) -> None:
        self._wake_drains(event.uids)

    def _on_returned(self, event: Returned, _: Any) -> None:
        self._wake_drains(event.uids)
        for uid in event.started:
            self._began(uid, event.seq)

    def _on_ready(self, event: Ready, _: Any) -> None:
        """A server receives messages from here on; what was its to do in its window
        (from `since`), we redo, as does every other process that read this (each id
        goes into a queue once, whoever merges it first)."""
        server = event.server
        if server == self.me:
            self._opening = False
            # Everything before it is handled: say so now, not at the next ping, as the
            # others' redos wait for that (`redo_gap`).
            self.spawn(retrying, "saying how far we read",
                       partial(self.cluster.mark, "ping", ref=event.seq))
        elif len(self.view.servers) > 1:
            self.spawn(self.recovery.redo_gap, server, event.since, event.seq)
        for uid in event.started:
            self._began(uid, event.seq)

    def _on_redone(self, event: Redone, _: Any) -> None:
        self._wake_drains([u.uid for u in list(self.registry.users.values()) if u.phase.runs])
        for uid in event.started:
            self._began(uid, event.seq)

    def _on_recovered(self, event: Recovered, _: Any) -> None:
        """The winner redid a dead server's work: we redo it from our copy too."""
        self.recovery.read_recovered(event.dead, event.server)
        self._recovered_for_joined(event.dead, set(event.started))
        self._wake_drains([u.uid for u in list(self.registry.users.values()) if u.phase.runs])
        for uid in event.started:
            self._began(uid, event.seq)

    def _wake_drains(self, uids: Iterable[str]) -> None:
        for uid in uids:
            user = self.registry.user(uid)
            if user is not None and user.phase.runs:
                user.drain_wakeup.set()
