"""Count every message of a stream: sent, received, still queued, lost, duplicated."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import redis


@dataclass
class Stream:
    """Publishes `seq:uid` payloads to users, remembering which ones a server received.

    PUBLISH returns how many subscribers got the message; only those with at least one
    are owed (SPEC §5: what is published while no server listens is not seen).
    """

    r: redis.Redis
    uids: list[str]
    owed: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    sent_at: dict[str, float] = field(default_factory=dict)  # payload -> when PUBLISH returned
    unseen: int = 0
    failed: int = 0
    _seq: int = 0

    def publish(self, count: int, rate: float | None = None, stop: threading.Event | None = None) -> None:
        started = time.monotonic()
        for n in range(count):
            if stop is not None and stop.is_set():
                return
            uid = random.choice(self.uids)
            self._seq += 1
            payload = f"{self._seq}:{uid}"
            try:
                if self.r.publish(f"rm.users.{uid}", payload) > 0:
                    self.owed[uid].append(payload)
                    self.sent_at[payload] = time.monotonic()
                else:
                    self.unseen += 1
            except redis.RedisError:
                self.failed += 1
            if rate:
                ahead = started + (n + 1) / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)

    @property
    def sent(self) -> int:
        return sum(len(v) for v in self.owed.values())


def queued_payloads(r: redis.Redis, uid: str) -> list[str]:
    return [json.loads(raw)["payload"] for raw in r.lrange(f"rm:users:{uid}:messages", 0, -1)]


def account(stream: Stream, received: dict[str, list[str]], r: redis.Redis) -> dict[str, Any]:
    """Each owed message is received or queued; lost must be 0. Order is checked per uid."""
    totals = Counter()
    out_of_order = 0
    examples: list[tuple[str, str, str]] = []
    for uid in stream.uids:
        owed = stream.owed.get(uid, [])
        got = received.get(uid, [])
        queued = queued_payloads(r, uid)
        seen = Counter(got) + Counter(queued)
        totals["sent"] += len(owed)
        totals["received"] += len(set(got))
        totals["queued"] += len(queued)
        totals["lost"] += sum(1 for p in owed if seen[p] == 0)
        totals["duplicated"] += sum(n - 1 for n in seen.values() if n > 1)
        first_seen = list(dict.fromkeys(got))
        positions = {p: i for i, p in enumerate(owed)}
        ranks = [positions[p] for p in first_seen if p in positions]
        for a, b in zip(ranks, ranks[1:], strict=False):
            if b < a:
                out_of_order += 1
                examples.append((uid, owed[a], owed[b]))
    totals["out_of_order"] = out_of_order
    if examples:
        totals["out_of_order_examples"] = examples[:5]
    totals["unseen_by_server"] = stream.unseen
    totals["publish_failed"] = stream.failed
    return dict(totals)
