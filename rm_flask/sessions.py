"""A socket's life here: its identify announced, its ack mode switched, its leaving
announced, and what it held given back to the queue once every process has read that.

The socket joins, and a drain starts, when the dispatcher reads the announcement
(`On`); what it held is given back when the dispatcher reads its `Off`
(`give_back`), so that nothing published meanwhile, read by other processes with the
socket still in their view, is lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial

import redis

from . import envelope, names
from .acks import Settler
from .cluster import Cluster, View
from .envelope import Message
from .metrics import Metrics
from .registry import Conn, Pending, Registry, User
from .retry import retrying
from .sequence import in_sequence
from .store import Store
from .transport import Transport

log = logging.getLogger("rm_flask")

LOG_RECOMMITS = 10  # recommits logged one by one per give-back; the rest as a count
ADMIT_AT_ONCE = 8  # identifies announced to Redis at the same time, at most
ADMIT_WITHIN = 5.0  # seconds an identify may wait for Redis before it is refused


class Sessions:
    def __init__(self, view: View, registry: Registry, store: Store, cluster: Cluster,
                 transport: Transport, metrics: Metrics, settler: Settler,
                 suspect: Callable[[], None], ack_timeout: float) -> None:
        self.view = view
        self.registry = registry
        self.store = store
        self.cluster = cluster
        self.transport = transport
        self.metrics = metrics
        self.settler = settler
        # Asks the service to look for a dead server now (see `admit`).
        self.suspect = suspect
        self.ack_timeout = ack_timeout
        self.me = cluster.server_id
        self._admitting = threading.BoundedSemaphore(ADMIT_AT_ONCE)

    def admit(self, conn: Conn, uid: str) -> bool:
        """Announce an identified socket to every server; it joins when that comes back.
        False if Redis did not take the announcement within `ADMIT_WITHIN` seconds.

        The lock is held across the announcement so that the socket's leaving, if it
        leaves meanwhile, is announced after it, and so that our listener, which reads
        the announcement, joins the socket only after the identify reply is on its way.
        A few identifies at a time: a reconnect storm of thousands would otherwise
        empty the connection pool, and hold lock stripes the listener needs, while
        they wait for it.
        """
        with self._admitting, self.registry.user_lock(uid):
            if (self.registry.get(conn.sid) is not conn or conn.announced is not None
                    or conn.requested != uid):
                return True  # gone, or identified again, while we waited for the lock
            # Set before the call: if Redis ran it and only the reply was lost, the
            # socket's leaving must still be announced.
            conn.announced = uid
            socks = self.view.sockets.get(uid)
            if socks and all(server != self.me for server, _ in socks):
                # The user's other sockets are on other servers: a tab coming back after
                # its server died. Have the death announced first, if Redis shows it
                # already, so that this socket drains what the dead server held before
                # anything newer, rather than after.
                self.suspect()
            try:
                retrying(f"announcing a socket of {uid}",
                         lambda: self.cluster.on(conn.sid, uid, self.registry.user_conn_limit),
                         give_up_after=ADMIT_WITHIN)
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                return False
            return True

    def switch_ack(self, conn: Conn, ack: bool, batch: bool = False) -> None:
        """The socket identified again with another ack mode (SPEC §4): from now on its
        messages count as delivered when acknowledged (`ack`, one by one or in `batch`es),
        or when written."""
        uid = conn.requested
        if uid is None:
            return
        with self.registry.user_lock(uid):
            # What was sent before keeps the way it is acknowledged: an ack id, or an id
            # for an `ack` event, which is taken from any socket that acknowledges.
            conn.batch = batch
            if conn.ack == ack:
                return
            conn.ack = ack
            user = self.registry.user(uid)
            if ack or user is None:
                return
            # Now plain: what it was sent and has not acknowledged was written to it.
            for pending in list(user.pending.values()):
                if conn.sid in pending.waiting and user.pending.pop(pending.message.id, None):
                    self.metrics.delivered.inc()
                    self.settler.settle(uid, [pending.message.stored])

    def leave(self, conn: Conn) -> None:
        """Detach a socket and announce it; what only it held is given back once every
        server has read that (`_give_back`), so nothing it missed meanwhile is lost."""
        uid = conn.announced
        if uid is None:
            return
        with self.registry.user_lock(uid):
            conn.announced = None
            user = self.registry.leave(conn) or self.registry.hold(uid)
            orphans: list[Pending] = []
            for pending in list(user.pending.values()):
                pending.waiting.discard(conn.sid)
                # Popped, not just read: an ack racing in now must find it gone, or both
                # the ack and the recommit would count it.
                if not pending.waiting and user.pending.pop(pending.message.id, None) is not None:
                    orphans.append(pending)
            if not conn.ack:
                # Written as far as we counted, but still behind a replay it awaited.
                orphans += [Pending(msg, set()) for msg in conn.held_writes]
            conn.awaiting, conn.replayed, conn.held_writes = set(), [], []
            user.leaving[conn.sid] = orphans
            if user.phase.runs:
                user.drain_wakeup.set()
        retrying(f"announcing that a socket of {uid} left",
                 lambda: self.cluster.off(conn.sid, uid, True))

    def give_back(self, uid: str, sid: str, off: int = 0) -> None:
        """We read that socket `sid` left (at event `off`): give back what only it had."""
        lock = self.registry.user_lock(uid)
        with lock:
            user = self.registry.hold(uid)
            orphans = [p.message for p in user.leaving.pop(sid, [])]
            if not user.live():
                # Our last tab waited for another process's drain to end: what it held
                # back goes too.
                user.stop_following()
            leftover = user.take_leftover()
            user.returning += 1
        given = orphans + leftover
        try:
            self.recommit(uid, given)
        except Exception:
            # Redis refused the writes for good (out of memory, say): keep them to give
            # back with the next give-back, and announce this one all the same, or the
            # user's drains would wait for it for ever.
            log.exception("%s: could not give back %d messages yet", uid, len(given))
            with lock:
                user.leftover[:0] = given
            given = []
        finally:
            with lock:
                user.returning -= 1
                self.registry.forget_if_idle(user)
        # Announced even when nothing was given: drains wait for it. If the queue holds
        # something (given now, or left by a drain this socket's server had not finished)
        # and the user is still online, it is drained again.
        queued = bool(given) or bool(retrying("reading a queue", partial(self.store.queue_length, uid)))
        retrying(f"announcing the give-back of {uid}",
                 lambda: self.cluster.mark("returned", [uid], drain="start" if queued else "", ref=off))

    def return_leftover(self, uid: str) -> None:
        """Messages that could not be sent to a user who may still be online: back to
        the queue, which is drained again."""
        with self.registry.user_lock(uid):
            user = self.registry.user(uid)
            given = user.take_leftover() if user else []
        self.recommit(uid, given)
        retrying(f"announcing the give-back of {uid}",
                 lambda: self.cluster.mark("returned", [uid], drain="start", ref=self.view.seq))

    def recommit(self, uid: str, messages: list[Message]) -> None:
        """Give undelivered messages back to the queue, in order: every give-back's path."""
        if not messages:
            return
        # The queue's scripts merge a give-back by place, which needs it in that order:
        # what tabs held comes in the order it was sent, kept messages after it.
        messages = in_sequence(messages, self.view.era)
        if log.isEnabledFor(logging.INFO):
            # One line a message, as in the seed, but not thousands in one go: that much
            # logging at once would stall every other delivery.
            for msg in messages[:LOG_RECOMMITS]:
                log.info(
                    "%s: Client is no longer online, recommitting '%s' to %s queue.",
                    uid, envelope.preview(msg.envelope), names.user_channel(uid),
                )
            if len(messages) > LOG_RECOMMITS:
                log.info("%s: ... and %d more recommitted to %s queue.",
                         uid, len(messages) - LOG_RECOMMITS, names.user_channel(uid))
        retrying(f"recommitting for {uid}", lambda: self.store.recommit(uid, [m.stored for m in messages]))
        self.metrics.recommitted.inc(len(messages))

    def drop_unresponsive(self, user: User, late: list[Pending]) -> None:
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
                if late and not user.phase.runs:
                    self.drop_unresponsive(user, late)

    def keep_in_redis(self) -> None:
        """Stopping, with the listener stopped: messages only this process's memory holds
        (held behind a drain's end, or kept to give back) go to their queues, each in its
        place in the sequence, for the next server to deliver. What was sent and not
        acknowledged is in flight in Redis already, and is given back by whichever server
        finds this one gone."""
        for user in list(self.registry.users.values()):
            with self.registry.user_lock(user.uid):
                kept, user.held = user.take_leftover() + user.held, []
                if not kept:
                    continue
                writes = self.store.writes()
                for msg in kept:
                    writes.append(user.uid, msg.stored, untrack=True)
                try:
                    retrying(f"queueing what {user.uid} was owed", writes.execute, give_up_after=5)
                except redis.RedisError as exc:
                    log.error("%s: could not queue %d messages before stopping: %s", user.uid, len(kept), exc)
