"""The ceiling: how fast one Python process reads pub/sub messages from Redis (redis-py + hiredis).

The subscriber PSUBSCRIBEs ``rm.*`` and does not read while the parent publishes every
message; Redis holds them in the subscriber's output buffer. Then the subscriber reads them all
as fast as it can, so the figure is the reading side alone, not the publisher's speed.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from typing import Any

import redis

from bench.publisher import Publisher


def _subscriber(port: int, n: int, ready: Any, go: Any, out: Any) -> None:
    r = redis.Redis(host="127.0.0.1", port=port)
    ps = r.pubsub(ignore_subscribe_messages=True)
    ps.psubscribe("rm.*")
    ps.get_message(timeout=1.0)  # consume the psubscribe confirmation
    ready.set()
    go.wait(60)
    got = 0
    c0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    for msg in ps.listen():
        if msg["type"] == "pmessage":
            got += 1
            if got == n:
                break
    t1 = time.perf_counter()
    c1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    out.put({"seconds": t1 - t0, "cpu_s": cpu, "got": got})
    ps.close()


def measure(port: int, n: int) -> dict[str, Any]:
    import hiredis  # noqa: F401  - fail loudly: without it this is not the ceiling we claim

    ctx = mp.get_context("fork")
    ready, go, out = ctx.Event(), ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_subscriber, args=(port, n, ready, go, out), daemon=True)
    proc.start()
    try:
        if not ready.wait(10):
            raise RuntimeError("raw subscriber did not subscribe")
        pub = Publisher(port)
        res = pub.run(["rm.users.raw"], n, batch=1000)
        pub.close()
        go.set()
        result = out.get(timeout=120)
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
    rate = result["got"] / max(result["seconds"], 1e-9)
    return {
        "scenario": "raw_subscriber", "target": "redis-py+hiredis", "messages": n,
        "deliveries": result["got"], "deliveries_per_s": round(rate),
        "publish_per_s": round(res.sent / res.seconds),
        "cpu_us_per_msg": round(result["cpu_s"] / max(result["got"], 1) * 1e6, 2),
    }
