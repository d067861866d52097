"""The operators' numbers: what /admin shows, and the gauges /metrics adds for alerting.

Everything here reads the running `Service` and Redis; nothing here changes either. The
Redis reads that grow with the data (the queue scan, the servers table) are bounded and
cached, so that an admin page polling every second, or a scrape every 15 s, costs Redis
little however many users there are; the queue scan runs in the background, so that a
scrape does not wait on a Redis that is slow to answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis
from prometheus_client.core import GaugeMetricFamily

from . import names

if TYPE_CHECKING:
    from flask import Flask

    from .service import Service

QUEUE_SCAN_EVERY = 5.0  # seconds a queue scan is reused
QUEUE_SCAN_BUDGET = 10_000  # keys a scan looks at, at most; past it the figures are a sample
SERVERS_EVERY = 2.0  # seconds the servers table is reused
DEEPEST = 10  # users shown in the deepest-queues table


@dataclass
class QueueScan:
    """The longest queues found by one bounded SCAN of `rm:users:*:messages`."""

    at: float = 0.0
    queues: int = 0  # queues found
    complete: bool = True  # False when the budget ran out before the scan did
    deepest: list[tuple[str, int]] = field(default_factory=list)  # (uid, length), longest first

    @property
    def longest(self) -> int:
        return self.deepest[0][1] if self.deepest else 0


class Stats:
    """Reads the numbers of one running server."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._scan = QueueScan()
        self._scanning = False
        self._servers: tuple[float, list[dict[str, Any]]] = (0.0, [])

    ### From this process ###

    def samples(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """Every sample of /metrics, by name: what the page shows is what Prometheus sees."""
        found: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in self.service.metrics.registry.collect():
            for sample in family.samples:
                found.setdefault(sample.name, []).append((sample.labels, sample.value))
        return found

    def round_trip_age(self) -> float | None:
        """Seconds since our last ping came back through the subscription (None: never)."""
        last = self.service.listener.last_pong
        return time.monotonic() - last if last else None

    def redis_ping(self) -> float | None:
        """Seconds a PING to Redis takes now; None if Redis does not answer."""
        started = time.perf_counter()
        try:
            self.service.redis.ping()
        except redis.RedisError:
            return None
        return time.perf_counter() - started

    ### From Redis, bounded and cached ###

    def queues(self) -> QueueScan:
        """The last scan, and a new one started in the background when it is older than
        `QUEUE_SCAN_EVERY`: a scrape or the admin page never waits on Redis for it (an
        empty scan, `at` 0, until the first one is in)."""
        if time.monotonic() - self._scan.at >= QUEUE_SCAN_EVERY and not self._scanning:
            self._scanning = True
            self.service.socketio.start_background_task(self._rescan)
        return self._scan

    def _rescan(self) -> None:
        try:
            self._scan = self._scan_queues()
        except redis.RedisError:
            pass  # the next look tries again
        finally:
            self._scanning = False

    def _scan_queues(self) -> QueueScan:
        client = self.service.redis
        keys: list[bytes] = []
        cursor, looked = 0, 0
        while True:
            cursor, batch = client.scan(cursor, match=names.QUEUE_KEY_PATTERN, count=1000)
            keys.extend(batch)
            looked += 1000
            if cursor == 0 or looked >= QUEUE_SCAN_BUDGET:
                break
        pipe = client.pipeline(transaction=False)
        uids = []
        for key in keys:
            uid = names.uid_of_queue_key(key.decode("utf-8", "replace"))
            if uid is not None:
                uids.append(uid)
                pipe.llen(key)
        lengths = pipe.execute() if uids else []
        ranked = sorted(zip(uids, lengths, strict=True), key=lambda item: -item[1])
        return QueueScan(time.monotonic(), len(uids), cursor == 0,
                         [(uid, n) for uid, n in ranked[:DEEPEST] if n > 0])

    def servers(self) -> list[dict[str, Any]]:
        """The servers on this Redis: id, host and pid, heartbeat, sockets (as we see them)."""
        at, table = self._servers
        if time.monotonic() - at < SERVERS_EVERY:
            return table
        service = self.service
        client = service.redis
        ids = sorted(m.decode() for m in client.smembers(names.SERVERS_KEY))
        pipe = client.pipeline(transaction=False)
        for server in ids:
            pipe.get(names.server_key(server))
            pipe.ttl(names.server_key(server))
        replies = pipe.execute() if ids else []
        sockets: dict[str, int] = {}
        for socks in list(service.dispatcher.view.sockets.values()):
            for server, _ in socks:
                sockets[server] = sockets.get(server, 0) + 1
        table = []
        for server, about, ttl in zip(ids, replies[::2], replies[1::2], strict=True):
            table.append({
                "id": server,
                "me": server == service.server_id,
                "about": about.decode("utf-8", "replace") if about else None,
                "heartbeat_ttl": ttl if ttl and ttl > 0 else None,
                "sockets": sockets.get(server, 0),
            })
        self._servers = (time.monotonic(), table)
        return table


class Gauges:
    """The gauges /metrics adds for alerting, computed when Prometheus scrapes."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Describing without collecting: registering must not scan Redis.
        return iter(self._families({}))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        service = self.stats.service
        values: dict[str, float] = {
            "subscribed": 1.0 if service.listener.subscribed else 0.0,
            "redis_up": 1.0 if service.redis_ok else 0.0,
        }
        age = self.stats.round_trip_age()
        if age is not None:
            values["round_trip_age"] = age
        scan = self.stats.queues()
        if scan.at:
            values["queue_longest"], values["queues"] = scan.longest, scan.queues
        return iter(self._families(values))

    @staticmethod
    def _families(values: dict[str, float]) -> list[GaugeMetricFamily]:
        specs = [
            ("rm_redis_subscribed", "1 while our pub/sub subscription is up", "subscribed"),
            ("rm_redis_up", "1 while Redis answered our last heartbeat (each second)", "redis_up"),
            ("rm_pubsub_round_trip_age_seconds",
             "Seconds since our last ping came back through the subscription: listener lag",
             "round_trip_age"),
            ("rm_queue_length_max",
             f"Longest user queue (scanned every {QUEUE_SCAN_EVERY:g} s, at most "
             f"{QUEUE_SCAN_BUDGET} keys)", "queue_longest"),
            ("rm_queues", "User queues found by that scan", "queues"),
        ]
        families = []
        for name, help_text, key in specs:
            family = GaugeMetricFamily(name, help_text)
            if key in values:
                family.add_metric([], values[key])
            families.append(family)
        return families


def init_app(app: Flask, service: Service) -> Stats:
    """Give `app` the operators' numbers, and `service`'s /metrics their gauges."""
    stats = Stats(service)
    service.metrics.registry.register(Gauges(stats))
    app.extensions["rm_stats"] = stats
    return stats
