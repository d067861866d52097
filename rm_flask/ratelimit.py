"""Counting failed identifies, so that guessing keys is slow (per process, in memory)."""

from __future__ import annotations

import threading
import time


class FailureLimiter:
    """Allow `limit` failures per key in each `window` seconds; past that, refuse the key.

    Fixed windows: cheap, and what matters is the order of magnitude of guesses a minute.
    """

    # Past this many keys, expired ones are swept so that a flood of distinct keys cannot
    # grow the table without bound.
    SWEEP_AT = 100_000

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._counts: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def blocked(self, key: str) -> bool:
        entry = self._counts.get(key)
        return entry is not None and entry[1] >= self.limit and time.monotonic() - entry[0] < self.window

    def attempt(self, key: str) -> bool:
        """Count an attempt as failed before it is checked; False if over the limit.

        Counting first means that guesses sent in parallel cannot all be checked
        while the earlier ones are still out; `forgive` undoes it on success.
        """
        if self.blocked(key):
            return False
        self.fail(key)
        return True

    def forgive(self, key: str) -> None:
        with self._lock:
            entry = self._counts.get(key)
            if entry is not None and entry[1] > 0:
                self._counts[key] = (entry[0], entry[1] - 1)

    def fail(self, key: str) -> None:
        now = time.monotonic()
        with self._lock:
            start, count = self._counts.get(key, (now, 0))
            if now - start >= self.window:
                start, count = now, 0
            self._counts[key] = (start, count + 1)
            if len(self._counts) > self.SWEEP_AT:
                self._counts = {k: v for k, v in self._counts.items() if now - v[0] < self.window}
