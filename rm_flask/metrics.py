"""Prometheus metrics, one registry per app so that several apps can live in one process."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric


def observe_many(histogram: Histogram, value: float, times: int) -> None:
    """`times` observations of one `value`, as `times` calls of `observe` would make them.

    A run's messages share one latency, and each `observe` takes a lock: once per message
    it cost 2% of the server's CPU. prometheus_client has no weighted observe, so this
    writes its sum and bucket (version pinned; tests/test_metrics.py compares the two)."""
    if times <= 0:
        return
    histogram._sum.inc(value * times)
    for bound, bucket in zip(histogram._upper_bounds, histogram._buckets, strict=True):
        if value <= bound:
            bucket.inc(times)
            break


class Tally:
    """A counter for the hot path: a plain number, read when the registry is collected.

    prometheus_client's `Counter` takes a lock per `inc`, a lock written in Python under
    gevent: once per message that was 2% of the server's CPU. Every greenlet runs on one
    thread, and `+=` on a number has no point where another could switch in."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.value = name, documentation, 0.0
        registry.register(self)

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation)
        family.add_metric([], self.value)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter("rm_messages_received", "PUBLISHes received from Redis", registry=r)
        self.delivered = Tally(
            "rm_messages_delivered",
            "Messages delivered to a user (written to a plain socket, or acknowledged)",
            r,
        )
        self.queued = Counter("rm_messages_queued", "Messages appended to an offline queue", registry=r)
        self.drained = Counter("rm_messages_drained", "Queued messages taken for delivery", registry=r)
        self.recommitted = Counter(
            "rm_messages_recommitted", "Undelivered messages given back to a queue", registry=r
        )
        self.trimmed = Counter(
            "rm_messages_trimmed", "Oldest queued messages dropped by max_queue_length", registry=r
        )
        self.invalid = Counter(
            "rm_messages_invalid",
            "PUBLISHes dropped: unknown channel or invalid id (channel), over max_payload (too_large)",
            ["reason"],
            registry=r,
        )
        self.foreign = Counter(
            "rm_queue_foreign",
            "Queue entries RedMessenger did not write (another server's or app's), delivered as SPEC §3 says",
            registry=r,
        )
        self.failed = Counter(
            "rm_messages_failed",
            "PUBLISHes lost to an unexpected error (Redis refusing writes, such as OOM), logged",
            registry=r,
        )
        self.identified = Counter("rm_identify_success", "Sockets identified", registry=r)
        self.identify_failed = Counter(
            "rm_identify_failures", "Identify attempts refused, by reason", ["reason"], registry=r
        )
        self.slow_closed = Counter(
            "rm_sockets_slow_closed", "Sockets closed for having max_buffered packets unwritten", registry=r
        )
        self.sockets = Gauge("rm_sockets_open", "Open Socket.IO connections in our namespace", registry=r)
        self.redis_reconnects = Counter(
            "rm_redis_reconnects", "Times the Redis subscription was re-established", registry=r
        )
        self.inbox_forwarded = Counter(
            "rm_inbox_forwarded", "Inbox entries this server forwarded as the inbox's reader (redos too)",
            registry=r)
        self.inbox_repeats = Counter(
            "rm_inbox_repeats", "Inbox entries acknowledged unsent: their key was another entry's",
            registry=r)
        self.inbox_invalid = Counter(
            "rm_inbox_invalid",
            "Inbox entries acknowledged unsent: a field missing (fields), an unknown channel (channel), "
            "over max_payload (too_large)",
            ["reason"], registry=r)
        # From the inbox's last look at Redis (`Inbox.look`, every second).
        self.inbox_unhandled = Gauge(
            "rm_inbox_unhandled", "Inbox entries not yet routed (read and unacknowledged, or unread)",
            registry=r)
        self.inbox_oldest = Gauge(
            "rm_inbox_oldest_unhandled_seconds", "Age of the oldest inbox entry not yet routed", registry=r)
        self.latency = Histogram(
            "rm_delivery_latency_seconds",
            "From receipt of a PUBLISH to its emit on a socket",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
