"""Several RedMessenger processes on one Redis (SPEC §5.9): start them, know when all of
them have routed a stream, publish to users and groups, probe a tab."""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from .accounting import Stream
from .clients import RMClient
from .processes import ServerProcess, wait_until

RECEIVED = "rm_messages_received_total"

_probes = itertools.count(1)


def start_servers(make_server: Callable[..., ServerProcess], count: int = 3,
                  **config: Any) -> list[ServerProcess]:
    """`count` servers on the session's Redis, each on a port of its own."""
    return [make_server(**config) for _ in range(count)]


def received(servers: Sequence[ServerProcess]) -> list[float]:
    return [s.metric(RECEIVED) for s in servers]


def wait_processed(r: redis.Redis, servers: Sequence[ServerProcess], before: Sequence[float],
                   count: int, barrier_uid: str, timeout: float = 30) -> None:
    """Until every server has received `count` PUBLISHes more than `before` and finished
    routing them.

    A server counts a batch as received when it starts routing it, and routes one batch
    after the other; so behind the stream go two barrier PUBLISHes (to the offline user
    `barrier_uid`), each waited for on every server: once the second is counted, the batch
    that held the stream's last message is done. The barriers count as received too.
    """
    target = [b + count for b in before]

    def have(goal: Sequence[float]) -> bool:
        return all(n >= g for n, g in zip(received(servers), goal, strict=True))

    wait_until(lambda: have(target), timeout,
               f"{count} PUBLISHes received by every server (have {received(servers)}, want {target})")
    for n in range(2):
        goal = [c + 1 for c in received(servers)]
        r.publish(f"rm.users.{barrier_uid}", f"barrier {n}")
        wait_until(lambda goal=goal: have(goal), timeout, "a barrier PUBLISH on every server")


def queued_envelopes(r: redis.Redis, uid: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in r.lrange(f"rm:users:{uid}:messages", 0, -1)]


def copy_of(tab: RMClient, payload: str) -> dict[str, Any] | None:
    """The first envelope `tab` got with this payload."""
    return next((m for m in list(tab.messages) if m.get("payload") == payload), None)


def probe(r: redis.Redis, uid: str, tabs: Sequence[RMClient], timeout: float = 10,
          accept: Callable[[list[dict[str, Any]]], bool] = lambda copies: True) -> list[dict[str, Any]]:
    """Publish `probe:N` messages to `uid` until one reaches every tab in `tabs` and `accept`
    takes their copies (in the order of `tabs`); return those copies."""
    deadline = time.monotonic() + timeout
    seen: list[Any] = []
    while True:
        payload = f"probe:{next(_probes)}"
        r.publish(f"rm.users.{uid}", payload)
        round_ends = min(deadline, time.monotonic() + 1)
        while True:
            copies = [copy_of(tab, payload) for tab in tabs]
            if all(copies) or time.monotonic() > round_ends:
                break
            time.sleep(0.01)
        if all(copies):
            if accept(copies):  # type: ignore[arg-type]
                return copies  # type: ignore[return-value]
            seen.append([c["bubble"] for c in copies])  # type: ignore[index]
        else:
            seen.append(f"{sum(1 for c in copies if c)}/{len(tabs)} tabs")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s probing {uid}: last rounds {seen[-5:]}")


@dataclass
class MixedStream(Stream):
    """`Stream` to users and to groups: `group_share` of the PUBLISHes go to a group
    (`rm.channels.$cid` or its alias `rm.groups.$cid`), owed to each of its members.

    Payloads are `seq:uid` or `seq:g:cid`; one group payload is owed to every member.
    PUBLISHes go out `batch` to a pipeline (in order), so that the rate holds while the
    test's own process is busy with hundreds of clients (one round trip per PUBLISH, each
    waiting for the GIL on its way back, made it drop to a fifth). `publishes` counts every
    PUBLISH made, seen by a server or not.
    """

    groups: dict[str, list[str]] = field(default_factory=dict)
    group_share: float = 0.2
    batch: int = 50
    publishes: int = 0
    elapsed: float = 0.0  # seconds publish() took
    rng: random.Random = field(default_factory=lambda: random.Random(11))

    def _next(self, cids: list[str]) -> tuple[str, str, list[str]]:
        self._seq += 1
        if cids and self.rng.random() < self.group_share:
            cid = self.rng.choice(cids)
            channel = f"rm.{'channels' if self._seq % 2 else 'groups'}.{cid}"
            return channel, f"{self._seq}:g:{cid}", self.groups[cid]
        uid = self.rng.choice(self.uids)
        return f"rm.users.{uid}", f"{self._seq}:{uid}", [uid]

    def publish(self, count: int, rate: float | None = None, stop: threading.Event | None = None) -> None:
        started = time.monotonic()
        cids = sorted(self.groups)
        done = 0
        while done < count and not (stop is not None and stop.is_set()):
            chunk = [self._next(cids) for _ in range(min(self.batch, count - done))]
            pipe = self.r.pipeline(transaction=False)
            for channel, payload, _ in chunk:
                pipe.publish(channel, payload)
            self.publishes += len(chunk)
            done += len(chunk)
            try:
                results = pipe.execute()
            except redis.RedisError:
                self.failed += len(chunk)
                continue
            now = time.monotonic()
            for (_, payload, owed_to), subscribers in zip(chunk, results, strict=True):
                if subscribers > 0:
                    for uid in owed_to:
                        self.owed[uid].append(payload)
                    self.sent_at[payload] = now
                else:
                    self.unseen += 1
            if rate:
                ahead = started + done / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        self.elapsed = time.monotonic() - started
