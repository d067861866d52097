"""Stand-ins for unit tests beside the real ones: each records what the real part would
have been asked to do, whose real behaviour is tested against Redis elsewhere."""

from __future__ import annotations

import redis


class FakeStore:
    def __init__(self) -> None:
        self.calls: list[dict[str, list[str]]] = []
        self.tracked: list[tuple[str, list[str]]] = []
        self.refuse = 0  # how many calls fail before one succeeds

    def track(self, uid: str, stored: list[str]) -> None:
        self.tracked.append((uid, list(stored)))

    def settle_many(self, by_uid: dict[str, list[str]]) -> None:
        if self.refuse:
            self.refuse -= 1
            raise redis.ConnectionError("Redis is restarting")
        self.calls.append({uid: list(members) for uid, members in by_uid.items()})
