"""Writing a message to this process's sockets of a user, and taking their acks.

The dispatcher, the drains and a socket that joins an online user all send through here,
so that "in flight until acknowledged, delivered once written" is decided in one place
(SPEC §4, §5.3). Callers hold the user's lock, except `acked`, which must not wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from . import envelope, sequence
from .acks import Settler
from .cluster import View
from .envelope import Message
from .metrics import Metrics
from .registry import Conn, Pending, Registry, User
from .retry import retrying
from .transport import Transport

log = logging.getLogger("rm_flask")


class Delivery:
    def __init__(self, me: str, view: View, registry: Registry, transport: Transport,
                 metrics: Metrics, settler: Settler, track: Callable[[str, list[str]], None]) -> None:
        """`track(uid, stored)`: record messages in flight in Redis (`Store.track`)."""
        self.track = track
        self.me = me
        self.view = view
        self.registry = registry
        self.transport = transport
        self.metrics = metrics
        self.settler = settler

    def bubble(self, uid: str) -> str | None:
        """The sid of the user's oldest socket on any server, if it is here."""
        socks = self.view.sockets.get(uid)
        return socks[0][1] if socks and socks[0][0] == self.me else None

    def send(self, user: User, msg: Message, pending: bool, bubble: str | None) -> bool:
        """Send to every open socket of `user` here (their lock held).

        `pending`: the message waits for an ack in `user.pending` (it is in flight in
        Redis already), and a socket that goes away gives it back. Otherwise it counts as
        delivered once written; False if no socket took it (all cut off for slowness).
        `bubble`: the sid of the socket that shows a notification.
        """
        conns = user.live()
        if pending:
            earlier = user.pending.get(msg.id)
            if earlier is not None and earlier.message.stored != msg.stored:
                # Sent again before its first copy was acknowledged, in an envelope another
                # process made (its own timestamp: given back by that process, then
                # drained here). Both are in flight; the new record is enough, and an ack
                # of either copy finds only the new one.
                self.settler.settle(user.uid, [earlier.message.stored])
            user.pending[msg.id] = Pending(msg, {c.sid for c in conns})
        if log.isEnabledFor(logging.INFO):
            log.info("%s: Sending message '%s' from %s",
                     user.uid, envelope.preview(msg.envelope), msg.envelope["source"])
        took = [conn for conn in conns if self.write(user, conn, msg, conn.sid == bubble)]
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

    def write(self, user: User, conn: Conn, msg: Message, bubble: bool) -> bool:
        """Write `msg` to one socket; False if that socket is too slow and is cut off."""
        if conn.awaiting:
            conn.held_writes.append(msg)  # behind the replays it awaits (`caught_up`)
            return True
        callback = partial(self.acked, user.uid, conn.sid, msg.id) if conn.ack and not conn.batch else None
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

    def owed_to_new_tab(self, user: User) -> list[Message]:
        """What a socket that joins an online user is sent before anything newer, oldest
        first: what the user's tabs here hold unacknowledged, or held when they left (it
        goes back to the queue once every process has read that they left: a tab that
        replaces one gets it first, rather than after newer messages), then what the
        running drain sent (live messages are queued while one runs: all of it is older)."""
        drained = {m.id for m in user.drain_log}
        older = [p.message for p in user.pending.values()]
        older += [p.message for held in user.leaving.values() for p in held]
        older += user.leftover
        return [m for m in sequence.in_sequence(older, self.view.era) if m.id not in drained] + user.drain_log

    def replay(self, user: User, conn: Conn) -> None:
        """Bring a socket that joins an online user up to date, in order (lock held)."""
        bubble = conn.sid == self.bubble(user.uid)
        orphans = {p.message.id: (sid, p) for sid, held in user.leaving.items() for p in held}
        owed = self.owed_to_new_tab(user)
        self._adopt_kept(user, conn, {m.id for m in owed})
        for msg in owed:
            pending = user.pending.get(msg.id)
            orphan = orphans.pop(msg.id, None) if pending is None else None
            if orphan is not None:
                # This socket's now, no longer given back with the tab that left: given
                # back too, it came again after this socket had acknowledged it.
                sid, taken = orphan
                user.leaving[sid].remove(taken)
                pending = user.pending[msg.id] = Pending(msg, set())
            if pending is not None:
                if conn.ack:
                    pending.waiting.add(conn.sid)
                else:
                    del user.pending[msg.id]
                    self.metrics.delivered.inc()
                    self.settler.settle(user.uid, [msg.stored])
            self.write(user, conn, msg, bubble)

    def _adopt_kept(self, user: User, conn: Conn, ids: set[str]) -> None:
        """What was kept while no socket here took the user's messages, and is replayed
        now, becomes this socket's to acknowledge, as a left tab's orphans do. Left in
        `leftover`, it went back to the queue with the next give-back, and came again
        after this socket had acknowledged it (2-21 a run in a test of 40 tabs churning
        by FIN). In flight in Redis first, as every message to an ack-mode socket."""
        kept = [m for m in user.leftover if m.id in ids and m.id not in user.pending]
        if not kept:
            return
        if conn.ack:
            retrying("recording messages in flight", partial(self.track, user.uid, [m.stored for m in kept]))
        taken = {m.id for m in kept}
        user.leftover = [m for m in user.leftover if m.id not in taken]
        for m in kept:
            user.pending[m.id] = Pending(m, set())

    def caught_up(self, user: User, conn: Conn) -> None:
        """The replays a socket awaited are in (or overdue): it gets them, and what was
        sent to it meanwhile, in sequence order, each id once (lock held)."""
        due = sequence.in_sequence(conn.replayed + conn.held_writes, self.view.era)
        conn.awaiting, conn.replayed, conn.held_writes = set(), [], []
        bubble = conn.sid == self.bubble(user.uid)
        for msg in due:
            if not self.write(user, conn, msg, bubble):
                return

    def acked(self, uid: str, sid: str, msg_id: str, *_: Any) -> None:
        """A socket acknowledged a message: it is delivered, for every socket of the user.

        Takes no user lock: this runs for every message, and the only state it changes
        is one `pop`, which is atomic; everything else is deferred (`Settler`). Waiting
        here for the listener's round trip to Redis would stall every socket's acks.
        """
        user = self.registry.user(uid)
        pending = user.pending.pop(msg_id, None) if user else None
        if pending is None:
            return  # already acknowledged by another tab, or given back already
        self.metrics.delivered.inc()
        self.settler.settle(uid, [pending.message.stored])
        self._after_acks(user)

    def acked_many(self, uid: str, sid: str, ids: list[Any]) -> None:
        """Socket `sid` acknowledged the messages with these ids (an `ack` event, SPEC §4).

        Ids it was not sent, or that are settled already, are ignored: a tab can only
        acknowledge what it holds. No user lock, as in `acked`.
        """
        user = self.registry.user(uid)
        if user is None:
            return
        settled: list[str] = []
        for msg_id in ids:
            pending = user.pending.get(msg_id) if isinstance(msg_id, str) else None
            if pending is None or sid not in pending.waiting:
                continue
            if user.pending.pop(msg_id, None) is not None:
                settled.append(pending.message.stored)
        if settled:
            self.metrics.delivered.inc(len(settled))
            self.settler.settle(uid, settled)
            self._after_acks(user)

    def _after_acks(self, user: User) -> None:
        if user.phase.runs:
            user.drain_wakeup.set()  # its drain may wait for these acks
        if not user.conns:
            self.registry.forget_if_idle(user)
