"""Decide, for each message, which sockets get it now and what waits in Redis (SPEC §5).

One way through: the listener hands PUBLISHes to `route_batch`; `_deliver` either sends
each to its user's open sockets or queues it; a socket that identifies is `admit`ted and
drains the queue; acknowledgements settle messages; a socket that leaves gives back what
it had not acknowledged (`recommit`). Decisions for one uid are made under that uid's
lock, which is what keeps the queue, the drain and live delivery in one order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Protocol

import redis

from . import envelope, names
from .envelope import Message
from .metrics import Metrics
from .registry import Conn, Pending, Registry, User
from .store import Store

log = logging.getLogger("rm_flask")

RETRY_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
LOG_RECOMMITS = 10  # recommits logged one by one per give-back; the rest as a count
SETTLE_EVERY = 0.005  # seconds acks are gathered before one round trip clears them


class Transport(Protocol):
    """What the dispatcher needs from the socket layer."""

    def send(self, conn: Conn, msg: Message, bubble: bool, callback: Callable[..., None] | None) -> bool:
        """Queue `msg` for the socket; False if the socket has too much unwritten already."""

    def disconnect(self, conn: Conn) -> None: ...


def retrying(what: str, call: Callable[[], Any]) -> Any:
    """Run a Redis call until it succeeds, backing off.

    Used where giving up would lose a message: the data is only in this process's memory
    until the call lands.
    """
    tried = 0
    while True:
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            tried += 1
            if tried == 1:
                log.warning("Redis unavailable while %s (%s); retrying", what, exc)
            time.sleep(RETRY_DELAYS[min(tried, len(RETRY_DELAYS)) - 1])


class Dispatcher:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        transport: Transport,
        metrics: Metrics,
        spawn: Callable[..., Any],
        drain_batch: int = 100,
        ack_timeout: float = 30,
        max_payload: int = 1024 * 1024,
    ) -> None:
        self.store = store
        self.spawn = spawn
        self.registry = registry
        self.transport = transport
        self.metrics = metrics
        self.drain_batch = drain_batch
        self.ack_timeout = ack_timeout
        self.max_payload = max_payload
        self._to_settle: dict[str, list[str]] = {}
        self._settle_lock = threading.Lock()
        self._settle_wakeup = threading.Event()

    ### From Redis ###

    def route(self, channel: str, data: bytes) -> None:
        """Deliver or queue one PUBLISH."""
        self.route_batch([(channel, data)])

    def route_batch(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Deliver or queue PUBLISHes in the order Redis sent them; never raises.

        A batch is what the subscription had ready at once: its Redis writes (queue
        appends, in-flight records) go in one round trip, before anything is sent.
        """
        started = time.perf_counter()
        self.metrics.received.inc(len(items))
        try:
            accepted: list[tuple[tuple[str, str], Message]] = []
            for channel, data in items:
                target = self._accept(channel, data)
                if target is not None:
                    accepted.append((target, Message(envelope.make(channel, data))))
            groups = {ident for (kind, ident), _ in accepted if kind == "group"}
            members = self._members(groups) if groups else {}
            plan: list[tuple[str, Message]] = []
            for (kind, ident), msg in accepted:
                if kind == "user":
                    plan.append((ident, msg))
                else:
                    plan.extend((uid, msg) for uid in members[ident])
            self._deliver(plan)
            elapsed = time.perf_counter() - started
            for _ in accepted:
                self.metrics.latency.observe(elapsed)
        except Exception:
            # Not a connection error (those are retried until Redis is back): Redis said
            # no, for example out of memory. Say so loudly; the listener goes on.
            log.exception("Failed to route %d messages; they are lost", len(items))
            self.metrics.failed.inc(len(items))

    def _accept(self, channel: str, data: bytes) -> tuple[str, str] | None:
        target = names.parse_channel(channel)
        if target is None:
            log.warning("Ignoring message on %s: not a user or group channel with a valid id",
                        channel[:300])
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

        def read() -> list[set[bytes]]:
            pipe = self.store.redis.pipeline(transaction=False)
            for cid in order:
                pipe.smembers(names.group_members_key(cid))
            return pipe.execute()

        members: dict[str, list[str]] = {}
        for cid, raw in zip(order, retrying("reading group members", read), strict=True):
            uids = []
            for item in sorted(raw):
                uid = item.decode("utf-8", "replace")
                if names.valid_id(uid):
                    uids.append(uid)
                else:
                    log.warning("Group %s has an invalid member %r; skipped", cid, uid[:80])
            members[cid] = uids
        return members

    def _deliver(self, plan: list[tuple[str, Message]]) -> None:
        """Send each (uid, message) to the user's sockets, or queue it (SPEC §5 rules 1-2).

        The uids' locks are held from the decision until the message is written or
        queued, so that an identify cannot slip in between and miss it.
        """
        locks = list({id(lock): lock for lock in map(self.registry.user_lock, (u for u, _ in plan))}.values())
        for lock in locks:
            lock.acquire()
        try:
            writes = self.store.writes(from_listener=True)
            sends: list[tuple[User, Message, bool]] = []
            queued: list[tuple[str, Message]] = []
            for uid, msg in plan:
                user = self.registry.user(uid)
                live = user.live() if user else None
                if not live or user.draining:
                    # While a drain runs, live messages queue behind it to keep their place.
                    if not live:
                        log.info("Client is not online, queueing message in Redis (%s)",
                                 names.queue_key(uid))
                    writes.append(uid, msg.stored)
                    queued.append((uid, msg))
                    continue
                # With only ack-mode sockets, a message is delivered once acknowledged, so
                # it is recorded in flight before it is sent; written to a socket that
                # does not acknowledge, it is delivered.
                acked_only = all(c.ack for c in live)
                if acked_only:
                    writes.track(uid, msg.stored)
                sends.append((user, msg, acked_only))
            cut = retrying("writing to Redis", writes.execute) if writes else []
            for (uid, _), dropped in zip(queued, cut, strict=True):
                self.metrics.queued.inc()
                for raw in dropped:
                    self.metrics.trimmed.inc()
                    log.warning("%s: queue is over max_queue_length, dropping its oldest message '%s'",
                                uid, envelope.preview(envelope.loads(raw)))
            late = self.store.writes(from_listener=True)
            for user, msg, acked_only in sends:
                if not (user.live() and self._send(user, msg, pending=acked_only)):
                    # Its last socket was cut off earlier in this batch: queue it, behind
                    # what that socket held (which its close gives back to the head).
                    late.append(user.uid, msg.stored, untrack=acked_only)
            if late:
                retrying("queueing for a socket that was cut off", late.execute)
        finally:
            for lock in reversed(locks):
                lock.release()

    ### To sockets ###

    def _send(self, user: User, msg: Message, pending: bool) -> bool:
        """Send to every open socket of `user` (their lock held).

        `pending`: the message waits for an ack in `user.pending` (it is in flight in
        Redis already), and a socket that goes away gives it back. Otherwise it counts as
        delivered once written; False if no socket took it (all cut off for slowness).
        """
        conns = user.live()
        if pending:
            user.pending[msg.id] = Pending(msg, {c.sid for c in conns})
        if log.isEnabledFor(logging.INFO):
            log.info("%s: Sending message '%s' from %s",
                     user.uid, envelope.preview(msg.envelope), msg.envelope["source"])
        first = conns[0]
        took = [conn for conn in conns if self._write(user, conn, msg, conn is first)]
        if pending:
            return True
        if any(not conn.ack for conn in took):
            self.metrics.delivered.inc()
            return True
        if took:
            # The plain socket that made it delivered was cut off: only ack-mode sockets
            # have it now, so it is delivered when one of them acknowledges it.
            user.pending[msg.id] = Pending(msg, {conn.sid for conn in took})
            return True
        return False

    def _write(self, user: User, conn: Conn, msg: Message, bubble: bool) -> bool:
        """Write `msg` to one socket; False if that socket is too slow and is cut off."""
        callback = partial(self.acked, user.uid, conn.sid, msg.id) if conn.ack else None
        if self.transport.send(conn, msg, bubble, callback):
            return True
        # Its buffer is full. Let its writer run once: a burst fills a healthy socket's
        # buffer too, faster than its writer gets a turn.
        time.sleep(0)
        if conn.closing:
            return False
        if self.transport.send(conn, msg, bubble, callback):
            return True
        # A client that stopped reading must not hold the others up, nor grow our memory
        # without bound: close it. Its disconnect gives back what it held, from a
        # greenlet of its own, so that this batch goes on meanwhile.
        log.warning("%s: socket %s is not reading its messages; closing it", user.uid, conn.address)
        self.metrics.slow_closed.inc()
        conn.closing = True
        self.transport.disconnect(conn)
        return False

    def acked(self, uid: str, sid: str, msg_id: str, *_: Any) -> None:
        """A socket acknowledged a message: it is delivered, for every socket of the user.

        Takes no user lock: this runs for every message, and the only state it changes
        is one `pop`, which is atomic; everything else is deferred (`_settle`). Waiting
        here for the listener's round trip to Redis would stall every socket's acks.
        """
        user = self.registry.user(uid)
        pending = user.pending.pop(msg_id, None) if user else None
        if pending is None:
            return  # already acknowledged by another tab, or given back already
        self.metrics.delivered.inc()
        self._settle(uid, [pending.message.stored])
        if user.draining:
            user.drain_wakeup.set()
        if not user.conns:
            self.registry.forget_if_idle(user)

    def _settle(self, uid: str, stored: list[str]) -> None:
        """Forget delivered messages in Redis, in batches from `settle_loop`.

        A delivered message left in flight can only cause a duplicate, never a loss, so
        there is no need to wait for Redis here, on the path of every ack.
        """
        with self._settle_lock:
            self._to_settle.setdefault(uid, []).extend(stored)
        if not self._settle_wakeup.is_set():
            self._settle_wakeup.set()

    def settle_loop(self, stopped: threading.Event) -> None:
        while not stopped.is_set():
            self._settle_wakeup.wait(1.0)
            self._settle_wakeup.clear()
            time.sleep(SETTLE_EVERY)  # let a few more acks join the batch
            with self._settle_lock:
                batch, self._to_settle = self._to_settle, {}
            if not batch:
                continue
            try:
                self.store.settle_many(batch)
            except redis.RedisError as exc:
                log.warning("Could not clear %d delivered messages from in-flight yet: %s",
                            sum(map(len, batch.values())), exc)
                with self._settle_lock:
                    for uid, members in batch.items():
                        self._to_settle.setdefault(uid, []).extend(members)
                stopped.wait(1.0)
                self._settle_wakeup.set()

    def wake_settler(self) -> None:
        self._settle_wakeup.set()

    ### Identify and drain ###

    def admit(self, conn: Conn, uid: str, ack: bool) -> None:
        """Attach an identified socket to `uid`, then deliver the user's queue in order.

        Runs after the identify reply went out, so the reply comes before any message.
        """
        with self.registry.user_lock(uid):
            if self.registry.get(conn.sid) is not conn or conn.uid is not None or conn.requested != uid:
                return  # gone, or identified again, while we waited for the lock
            user, evicted = self.registry.join(conn, uid, ack)
            # Replay before evicting, so that what the evicted socket held has a new holder.
            self._replay(user, conn)
            for old in evicted:
                log.info("%s: more than %d sockets open, closing the oldest (%s)",
                         uid, self.registry.user_conn_limit, old.address)
                self.leave(old)
                self.transport.disconnect(old)
            if user.draining:
                return  # the running drain sends its next batches to this socket too
            user.draining = True
        self._drain(user)

    def _replay(self, user: User, conn: Conn) -> None:
        """Bring a socket that joins an online user up to date, in order.

        Unacknowledged messages the other tabs hold come first (all older than the drain,
        since live messages are queued while one runs), then what the running drain sent.
        """
        drained = {m.id for m in user.drain_log}
        older = [p.message for p in user.pending.values() if p.message.id not in drained]
        for msg in older + user.drain_log:
            pending = user.pending.get(msg.id)
            if pending is not None:
                if conn.ack:
                    pending.waiting.add(conn.sid)
                else:
                    del user.pending[msg.id]
                    self.metrics.delivered.inc()
                    self._settle(user.uid, [msg.stored])
            self._write(user, conn, msg, conn is user.live()[0])

    def wake(self, uid: str) -> None:
        """Drain a user who is online here and had messages put back in their queue."""
        with self.registry.user_lock(uid):
            user = self.registry.user(uid)
            if user is None or not user.live() or user.draining:
                return
            user.draining = True
        self.spawn(self._drain, user)

    def _drain(self, user: User) -> None:
        uid = user.uid
        lock = self.registry.user_lock(uid)
        announced = False
        while True:
            with lock:
                if not user.live():
                    self._end_drain(user)
                    return
                batch = None if user.returning else self._claim(uid)
                if batch == []:
                    self._end_drain(user)
                    return
                if batch:
                    if not announced:
                        announced = True
                        log.info("%s has %d messages enqueued, purging!",
                                 names.user_channel(uid), self._queued_count(uid, len(batch)))
                    waiting = self._send_drained(user, batch)
                user.drain_wakeup.clear()
            if batch is None:
                # A give-back on its way to the head of the queue, or Redis away: wait.
                user.drain_wakeup.wait(1.0)
                continue
            self._await_acks(user, waiting)

    def _claim(self, uid: str) -> list[bytes] | None:
        try:
            return self.store.claim(uid, self.drain_batch)
        except redis.RedisError as exc:
            log.warning("%s: cannot read the queue yet (%s); retrying", uid, exc)
            return None

    def _send_drained(self, user: User, batch: list[bytes]) -> set[str]:
        waiting = set()
        delivered, undelivered = [], []
        for raw in batch:
            msg = Message.from_stored(raw.decode("utf-8"))
            live = user.live()
            acked_only = all(c.ack for c in live)
            if not live or not self._send(user, msg, pending=acked_only):
                undelivered.append(msg.stored)  # every socket left or was cut off
                continue
            self.metrics.drained.inc()
            if log.isEnabledFor(logging.INFO):
                log.info("%s: Purging message '%s' from %s",
                         user.uid, envelope.preview(msg.envelope), msg.envelope["source"])
            user.drain_log.append(msg)
            if acked_only:
                waiting.add(msg.id)
            else:
                delivered.append(msg.stored)
        if delivered:
            self._settle(user.uid, delivered)
        if undelivered:
            # Still the head of the queue: back where they came from, in order.
            retrying(f"recommitting for {user.uid}", lambda: self.store.recommit(user.uid, undelivered))
        return waiting

    def _queued_count(self, uid: str, first_batch: int) -> int:
        try:
            return first_batch + self.store.queue_length(uid)
        except redis.RedisError:
            return first_batch

    def _await_acks(self, user: User, ids: set[str]) -> None:
        """Hold the next batch until this one is acknowledged (or its sockets are gone)."""
        deadline = time.monotonic() + self.ack_timeout
        lock = self.registry.user_lock(user.uid)
        while True:
            with lock:
                if not user.live() or not ids.intersection(user.pending):
                    return
                late = [p for i, p in user.pending.items() if i in ids]
                left = deadline - time.monotonic()
                if left <= 0:
                    self._drop_unresponsive(user, late)
                    return
            user.drain_wakeup.wait(min(left, 1.0))
            user.drain_wakeup.clear()

    def _end_drain(self, user: User) -> None:
        user.draining = False
        user.drain_log = []
        self.registry.forget_if_idle(user)

    ### Leaving ###

    def leave(self, conn: Conn) -> None:
        """Detach a socket; give back what only it was holding (SPEC §5 rule 5)."""
        uid = conn.uid
        if uid is None:
            return
        lock = self.registry.user_lock(uid)
        with lock:
            user = self.registry.leave(conn)
            if user is None:
                return
            orphans: list[Pending] = []
            for pending in list(user.pending.values()):
                pending.waiting.discard(conn.sid)
                # Popped, not just read: an ack racing in now must find it gone, or both
                # the ack and the recommit would count it.
                if not pending.waiting and user.pending.pop(pending.message.id, None) is not None:
                    orphans.append(pending)
            if user.draining:
                user.drain_wakeup.set()
            if not orphans:
                self.registry.forget_if_idle(user)
                return
            # Given back without the lock held: a large give-back takes a while, and the
            # listener must not wait on it to deliver other users' messages. New messages
            # for this user queue at the tail meanwhile; a drain waits for `returning`.
            user.returning += 1
        try:
            self.recommit(uid, orphans)
        finally:
            with lock:
                user.returning -= 1
                user.drain_wakeup.set()
                self.registry.forget_if_idle(user)
                if user.live() and not user.draining:
                    # The user is still here on a socket that was not sent these: drain
                    # them to it, from a task of its own since callers may hold locks.
                    user.draining = True
                    self.spawn(self._drain, user)

    def recommit(self, uid: str, orphans: list[Pending]) -> None:
        if log.isEnabledFor(logging.INFO):
            # One line a message, as in the seed, but not thousands in one go: that much
            # logging at once would stall every other delivery.
            for pending in orphans[:LOG_RECOMMITS]:
                log.info(
                    "%s: Client is no longer online, recommitting '%s' to %s queue.",
                    uid, envelope.preview(pending.message.envelope), names.user_channel(uid),
                )
            if len(orphans) > LOG_RECOMMITS:
                log.info("%s: ... and %d more recommitted to %s queue.",
                         uid, len(orphans) - LOG_RECOMMITS, names.user_channel(uid))
        retrying(
            f"recommitting for {uid}",
            lambda: self.store.recommit(uid, [p.message.stored for p in orphans]),
        )
        self.metrics.recommitted.inc(len(orphans))

    def _drop_unresponsive(self, user: User, late: list[Pending]) -> None:
        """Disconnect sockets that held a message past `ack_timeout` (lock held)."""
        sids = set().union(*(p.waiting for p in late)) if late else set()
        for conn in [c for c in user.live() if c.sid in sids]:
            log.warning("%s: socket %s did not acknowledge within %ss; closing it",
                        user.uid, conn.address, self.ack_timeout)
            self.leave(conn)
            self.transport.disconnect(conn)

    def expire_unacknowledged(self) -> None:
        """Close sockets holding a message unacknowledged past `ack_timeout`."""
        cutoff = time.monotonic() - self.ack_timeout
        for user in list(self.registry.users.values()):
            # Pending messages are in the order sent: the oldest tells, without the lock.
            oldest = next(iter(user.pending.values()), None)
            if oldest is None or oldest.sent_at >= cutoff:
                continue
            with self.registry.user_lock(user.uid):
                late = [p for p in user.pending.values() if p.sent_at < cutoff]
                if late and not user.draining:
                    self._drop_unresponsive(user, late)
