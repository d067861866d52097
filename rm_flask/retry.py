"""Redis calls that must land: retried while Redis is out of reach."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

log = logging.getLogger("rm_flask")

RETRY_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def retrying(what: str, call: Callable[[], Any], give_up_after: float | None = None) -> Any:
    """Run a Redis call until it succeeds, backing off; past `give_up_after` seconds (if
    given), raise its error.

    Used where giving up would lose a message: the data is only in this process's memory
    until the call lands.
    """
    tried = 0
    deadline = None if give_up_after is None else time.monotonic() + give_up_after
    while True:
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            tried += 1
            if deadline is not None and time.monotonic() >= deadline:
                raise
            if tried == 1:
                log.warning("Redis unavailable while %s (%s); retrying", what, exc)
            time.sleep(RETRY_DELAYS[min(tried, len(RETRY_DELAYS)) - 1])
