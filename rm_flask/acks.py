"""Delivered messages leave the in-flight sets in batches (SPEC §5, rule 4).

An ack (or a write to a socket that does not acknowledge) makes a message delivered at
once, in memory; forgetting it in Redis can wait a few milliseconds and join others in
one round trip. A delivered message left in flight could only cause a duplicate, never a
loss, so nothing on the path of an ack waits for Redis.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Protocol

import redis

log = logging.getLogger("rm_flask")

SETTLE_EVERY = 0.005  # seconds acks are gathered before one round trip clears them
RETRY_AFTER = 1.0  # seconds before a batch Redis refused is tried again


class SettlingStore(Protocol):
    def settle_many(self, by_uid: dict[str, list[str | bytes]]) -> None: ...


class Settler:
    """Gathers delivered messages, by user, for one `settle_many` at a time."""

    def __init__(self, store: SettlingStore) -> None:
        self.store = store
        self._due: dict[str, list[str | bytes]] = {}
        self._lock = threading.Lock()
        self._wakeup = threading.Event()

    def settle(self, uid: str, stored: Sequence[str | bytes]) -> None:
        """`stored` (envelopes of `uid`'s) were delivered: forget them in Redis soon."""
        with self._lock:
            self._due.setdefault(uid, []).extend(stored)
        if not self._wakeup.is_set():
            self._wakeup.set()

    def wake(self) -> None:
        """Settle what is due now (stopping)."""
        self._wakeup.set()

    def run(self, stopped: threading.Event) -> None:
        while not stopped.is_set():
            self._wakeup.wait(1.0)
            self._wakeup.clear()
            time.sleep(SETTLE_EVERY)  # let a few more acks join the batch
            if not self.settle_due():
                stopped.wait(RETRY_AFTER)
                self._wakeup.set()

    def settle_due(self) -> bool:
        """One round trip for everything due; False if Redis refused it (kept for later)."""
        with self._lock:
            batch, self._due = self._due, {}
        if not batch:
            return True
        try:
            self.store.settle_many(batch)
        except redis.RedisError as exc:
            log.warning("Could not clear %d delivered messages from in-flight yet: %s",
                        sum(map(len, batch.values())), exc)
            with self._lock:
                for uid, members in batch.items():
                    self._due.setdefault(uid, [])[:0] = members
            return False
        return True
