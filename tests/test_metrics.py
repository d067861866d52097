"""metrics: the hot path's counter and weighted observe expose what prometheus_client's
own would (names, types, values), so that dashboards and alerts read them alike."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from rm_flask.metrics import Metrics, Tally, observe_many


def test_observe_many_makes_the_samples_that_observing_one_by_one_makes():
    one_by_one, at_once = CollectorRegistry(), CollectorRegistry()
    buckets = (0.001, 0.01, 0.1)
    a = Histogram("lat", "latency", buckets=buckets, registry=one_by_one)
    b = Histogram("lat", "latency", buckets=buckets, registry=at_once)
    for value, times in [(0.0005, 3), (0.05, 7), (2.0, 2), (0.01, 1), (0.3, 0)]:
        for _ in range(times):
            a.observe(value)
        observe_many(b, value, times)
    samples = [(s.name, s.labels, s.value) for m in at_once.collect() for s in m.samples
               if not s.name.endswith("_created")]
    assert samples == [(s.name, s.labels, s.value) for m in one_by_one.collect() for s in m.samples
                       if not s.name.endswith("_created")]
    assert at_once.get_sample_value("lat_count") == 13


def test_a_tally_is_exposed_as_a_counter_of_the_same_name():
    registry = CollectorRegistry(auto_describe=True)
    tally = Tally("rm_things", "Things", registry)
    tally.inc()
    tally.inc(4)
    assert registry.get_sample_value("rm_things_total") == 5
    text = generate_latest(registry).decode()
    assert "# TYPE rm_things_total counter" in text or "# TYPE rm_things counter" in text
    reference = CollectorRegistry()
    Counter("rm_things", "Things", registry=reference).inc(5)
    assert "rm_things_total 5.0" in text and "rm_things_total 5.0" in generate_latest(reference).decode()


def test_the_delivered_count_is_read_as_before():
    metrics = Metrics()
    metrics.delivered.inc(3)
    assert metrics.registry.get_sample_value("rm_messages_delivered_total") == 3
