"""Draining a user's queue to their sockets here, in order (docs/cluster.md, "A socket
identifies", steps 4 to 6).

A drain runs on the user's home (the process holding their oldest socket) as a task of
its own, through the phases of `registry.Phase`: it waits for the owner to certify the
queue, takes it batch by batch into flight and sends it, announces its end when a claim
comes back empty, and sends the live messages held meanwhile once the last queued ones
are out. What it sends reaches the user's tabs on other processes as copies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import redis

from . import envelope, names
from .cluster import Cluster, View
from .envelope import Message
from .metrics import Metrics
from .registry import Pending, Phase, Registry, User
from .retry import retrying
from .store import Store

log = logging.getLogger("rm_flask")

DRAIN_RETRY = 1.0  # seconds before a drain that failed is started again


class Drains:
    """The drains of this process's users."""

    def __init__(
        self,
        me: str,
        registry: Registry,
        view: View,
        store: Store,
        cluster: Cluster,
        metrics: Metrics,
        spawn: Callable[..., Any],
        *,
        send: Callable[[User, Message, bool, str | None], bool],
        bubble: Callable[[str], str | None],
        copy_drained: Callable[..., None],
        recommit: Callable[[str, list[Message]], None],
        settle: Callable[[str, list[str]], None],
        drop_unresponsive: Callable[[User, list[Pending]], None],
        drain_batch: int = 100,
        ack_timeout: float = 30,
    ) -> None:
        self.me, self.registry, self.view, self.store = me, registry, view, store
        self.cluster, self.metrics, self.spawn = cluster, metrics, spawn
        # From the dispatcher: how a message reaches the sockets here (`send`), which
        # socket bubbles, copies for the other processes, giving back, acks, and closing
        # a socket that holds a batch past `ack_timeout`.
        self.send, self.bubble, self.copy_drained = send, bubble, copy_drained
        self.recommit, self.settle, self.drop_unresponsive = recommit, settle, drop_unresponsive
        self.drain_batch = drain_batch
        self.ack_timeout = ack_timeout

    def start(self, uid: str) -> None:
        """Drain `uid`'s queue here (or wake the drain that runs)."""
        with self.registry.user_lock(uid):
            user = self.registry.user(uid)
            if user is None or not user.live():
                return
            if user.phase.runs:
                user.drain_wakeup.set()
                return
            user.begin_drain()
        self.spawn(self._run, user)

    def resume(self, user: User) -> None:
        """Our drain stopped while ending, and a tab came back before what it held back
        was given back: it goes on from its end (lock held), as the queue may still hold
        messages from before the end, which the tab must get before the held ones."""
        user.resume_ending()
        self.spawn(self._run, user)

    def _run(self, user: User) -> None:
        """Run `_steps`; a drain that fails is ended and started again shortly, so that
        nothing the user is owed stays behind it (what it had taken is given back by
        `_claim` and `_send_batch` themselves)."""
        try:
            self._steps(user)
        except Exception:
            log.exception("%s: the drain of the queue failed; starting it again", user.uid)
            with self.registry.user_lock(user.uid):
                self._stop(user)
            self.spawn(self._again, user.uid)

    def _again(self, uid: str) -> None:
        time.sleep(DRAIN_RETRY)
        if uid in self.view.draining and self.view.home(uid) == self.me:
            self.start(uid)

    def _steps(self, user: User) -> None:
        """Deliver the queue to a user whose oldest socket is here, in order.

        A drain begins at an event (the user's first socket, or messages given back);
        from then on their messages are queued, by their owner, behind the drain. It
        waits for the owner to have read that far, takes the queue batch by batch, and
        when it finds it empty announces its end: live delivery resumes from that event,
        here held back until the owner has read that far too and the last queued
        messages from before it are sent.
        """
        uid = user.uid
        lock = self.registry.user_lock(uid)
        view = self.view
        announced = False
        while True:
            batch = None
            waiting: set[str] = set()
            with lock:
                if not user.live() or view.home(uid) != self.me:
                    self._stop(user)
                    return
                if user.phase is Phase.ENDING:
                    if user.end is None or not view.sealed(uid, *user.end):
                        batch = None  # the end is not read, or not certified yet
                    elif view.redoing():
                        # A redo (of a window opened before the end, say) may still put
                        # messages from before the end in their places.
                        batch = None
                    else:
                        batch = self._claim(uid, user.end[0])
                        if batch == []:
                            log.debug("%s: drain over, %d held messages sent", uid, len(user.held))
                            self.copy_drained(uid, [], over=True)
                            self.release_held(user)
                            continue
                else:
                    begun = view.draining.get(uid)
                    if begun is None:
                        self._stop(user)
                        return
                    if view.sealed(uid, *begun) and uid not in view.returning and not view.redoing():
                        # Only what came before the events we have read: one not read yet
                        # may open a window whose redo puts older messages in front of
                        # them. The rest is the end's to send, once that is known.
                        batch = self._claim(uid, view.seq + 1)
                if batch:
                    if not announced:
                        announced = True
                        log.info("%s has %d messages enqueued, purging!",
                                 names.user_channel(uid), self._queued_count(uid, len(batch)))
                    waiting = self._send_batch(user, batch)
                elif batch == []:
                    user.hold(None)
                user.drain_wakeup.clear()
            if batch == []:
                log.debug("%s: queue empty, ending the drain", uid)
                retrying(f"ending the drain of {uid}",
                         partial(self.cluster.mark, "ending", [uid], drain="end"))
                continue
            if batch is None:
                # Waiting on the owner, on a give-back, or on Redis.
                user.drain_wakeup.wait(1.0)
                continue
            if len(batch) >= self.drain_batch:
                # A backlog: the next batch waits for this one's acks, so that a slow
                # client is not flooded. A short batch was the end of the queue: what
                # follows is what arrived meanwhile, sent as it would have been live.
                self._await_acks(user, waiting)

    def release_held(self, user: User) -> None:
        """The drain is over: send what arrived since its end, live from now (lock held)."""
        self._send_late(user, user.release())

    def _send_late(self, user: User, held: list[Message]) -> None:
        """Send messages held back, as if live (lock held)."""
        live = user.live()
        if not held:
            return
        if not live:
            user.leftover.extend(held)
            return
        acked_only = all(c.ack for c in live)
        if acked_only:
            stored = [m.stored for m in held]
            retrying("recording messages in flight", partial(self.store.track, user.uid, stored))
        bubble = self.bubble(user.uid)
        for msg in held:
            if not (user.live() and self.send(user, msg, acked_only, bubble)):
                user.leftover.append(msg)

    def _claim(self, uid: str, before: int = 0) -> list[Message] | None:
        """Take the next batch of the queue into flight (lock held); None: not now."""
        try:
            start, raw = self.store.claim(uid, self.drain_batch, before, self.view.era)
        except redis.RedisError as exc:
            log.warning("%s: cannot read the queue yet (%s); retrying", uid, exc)
            return None
        try:
            return self._adopt(uid, start, raw)
        except Exception:
            # Taken from the queue, not yet sent: back to its head, or it is in limbo.
            log.exception("%s: could not read %d queued messages; giving them back", uid, len(raw))
            retrying(f"recommitting for {uid}", partial(self.store.recommit, uid, raw))
            return None

    def _adopt(self, uid: str, start: int, raw: list[bytes]) -> list[Message]:
        """The claimed entries as messages. Entries another program wrote (the original
        Node.js server's, an app's plain text) get an envelope with an id, which replaces
        them in flight before anything is sent, so every re-delivery carries that id."""
        channel = names.user_channel(uid)
        messages: list[Message] = []
        swaps: list[tuple[bytes, str, int]] = []
        for i, item in enumerate(raw):
            msg, foreign = Message.from_queue(item, channel)
            if foreign:
                swaps.append((item, msg.stored, start + i))
            messages.append(msg)
        if swaps:
            retrying(f"adopting queue entries of {uid}", partial(self.store.adopt, uid, swaps))
            for item, stored, _ in swaps:
                log.warning("%s: queue entry not written by RedMessenger ('%s'); delivered as %s",
                            uid, envelope.preview_stored(item), stored[:60])
            self.metrics.foreign.inc(len(swaps))
        return messages

    def _send_batch(self, user: User, batch: list[Message]) -> set[str]:
        waiting = set()
        sent: list[Message] = []
        delivered: list[str] = []
        undelivered: list[Message] = []
        bubble = self.bubble(user.uid)
        done = 0
        try:
            for msg in batch:
                live = user.live()
                acked_only = all(c.ack for c in live)
                if not live or not self.send(user, msg, acked_only, bubble):
                    undelivered.append(msg)  # every socket left or was cut off
                    done += 1
                    continue
                done += 1
                self.metrics.drained.inc()
                if log.isEnabledFor(logging.INFO):
                    log.info("%s: Purging message '%s' from %s",
                             user.uid, envelope.preview(msg.envelope), msg.envelope["source"])
                user.drain_log.append(msg)
                sent.append(msg)
                if acked_only:
                    waiting.add(msg.id)
                else:
                    delivered.append(msg.stored)
        finally:
            # Whatever was not handed to a socket (also after an error) goes back.
            undelivered += batch[done:]
            if delivered:
                self.settle(user.uid, delivered)
            if undelivered:
                # Still the head of the queue: back where they came from, in order.
                self.recommit(user.uid, undelivered)
        self.copy_drained(user.uid, sent)
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
                    self.drop_unresponsive(user, late)
                    return
            user.drain_wakeup.wait(min(left, 1.0))
            user.drain_wakeup.clear()

    def _stop(self, user: User) -> None:
        # If our sockets left before the drain's end was certified, what arrived since is
        # given back with what they held.
        user.stop_drain()
        self.registry.forget_if_idle(user)
