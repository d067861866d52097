"""The benchmark scenarios. Each returns one or more result rows (dicts, one JSON line each).

Every scenario starts a fresh server under test (so CPU and RSS belong to that scenario
alone), a fresh load-generator pool, and flushes Redis first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.loadgen import Ack, Pool, parse_payload
from bench.procs import TARGETS, CpuMeter, GunicornServer, RedisServer
from bench.publisher import Publisher, PublishResult
from bench.stats import cpu_summary, merge, percentiles, saturation


@dataclass
class Ctx:
    redis: RedisServer
    workdir: Path
    procs: int  # load-generator worker processes
    cores: int
    raw_rate: float | None = None  # raw subscriber msg/s measured earlier in this run


@contextmanager
def serving(ctx: Ctx, target: str, log_level: str = "warning") -> Iterator[GunicornServer]:
    ctx.redis.client.flushall()
    srv = GunicornServer(TARGETS[target], ctx.redis.port, ctx.workdir, log_level)
    try:
        srv.wait_ready(ctx.redis.client)
        yield srv
    finally:
        srv.close()


@contextmanager
def serving_many(ctx: Ctx, target: str, n: int) -> Iterator[list[GunicornServer]]:
    """``n`` servers under test on the same Redis, each its own gunicorn with one worker."""
    ctx.redis.client.flushall()
    servers: list[GunicornServer] = []
    try:
        for _ in range(n):  # started together, so their boots overlap
            servers.append(GunicornServer(TARGETS[target], ctx.redis.port, ctx.workdir))
        for srv in servers:
            srv.wait_ready(ctx.redis.client, subscribers=n)
        yield servers
    finally:
        for srv in servers:
            srv.stop_soon()
        for srv in servers:
            srv.close()


@contextmanager
def loadgen(ctx: Ctx) -> Iterator[Pool]:
    pool = Pool(ctx.procs)
    try:
        yield pool
    finally:
        pool.close()


def ws_url(srv: GunicornServer) -> str:
    return f"ws://127.0.0.1:{srv.port}/socket.io/?EIO=4&transport=websocket"


def connect(
    pool: Pool, srv: GunicornServer, uids: list[str], ack: Ack, conc: int = 100
) -> dict[str, Any]:
    """Open and identify one socket per uid, spread over the workers; returns timing."""
    cmds = [
        {"op": "connect", "url": ws_url(srv), "uids": part, "ack": ack, "conc": conc,
         "timeout": 15.0}
        for part in pool.split(uids)
    ]
    replies = pool.call(cmds, timeout=300)
    errors: dict[str, int] = {}
    for rep in replies:
        for k, v in rep["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {
        "ok": sum(r["ok"] for r in replies), "failed": sum(r["failed"] for r in replies),
        "seconds": (max(r["t1"] for r in replies) - min(r["t0"] for r in replies)) / 1e9,
        "errors": errors,
    }


def wait_delivered(pool: Pool, expected: int, idle_s: float, deadline_s: float) -> None:
    """Wait until the clients hold ``expected`` unique messages, or nothing arrived for
    ``idle_s`` (lost messages never come), or ``deadline_s`` passed."""
    start = time.monotonic()
    last, last_t = -1, start
    while True:
        got = pool.received()
        now = time.monotonic()
        if got >= expected or now - start > deadline_s:
            return
        if got != last:
            last, last_t = got, now
        elif now - last_t > idle_s:
            return
        time.sleep(0.005)


Servers = GunicornServer | list[GunicornServer]


def _as_list(srv: Servers) -> list[GunicornServer]:
    return srv if isinstance(srv, list) else [srv]


def _worker(srv: GunicornServer) -> psutil.Process:
    assert srv.worker is not None, "wait_ready() finds the worker"
    return srv.worker


def meter_for(ctx: Ctx, srv: Servers, pool: Pool) -> CpuMeter:
    """Meters the server worker(s) (``server``, or ``server0``, ``server1``… when several),
    the publisher (this process), each load-generator process and redis-server."""
    workers = [_worker(s) for s in _as_list(srv)]
    procs = {"server": workers[0]} if len(workers) == 1 else {
        f"server{i}": w for i, w in enumerate(workers)}
    procs |= {"publisher": psutil.Process(), **pool.processes()}
    procs["redis"] = psutil.Process(ctx.redis.pid)
    return CpuMeter(procs)


def _shares(meter: CpuMeter, wall: float) -> dict[str, float]:
    out = {k: v / max(wall, 1e-9) for k, v in meter.used.items()}
    # Load from other processes is only known over the meter's whole window.
    out["other"] = meter.used.get("other", 0.0) / meter.wall
    return out


def _common(ctx: Ctx, srv: Servers, meter: CpuMeter, wall: float, delivered: int) -> dict[str, Any]:
    """CPU (summed over the server processes when several), RSS (likewise), and shares."""
    shares = _shares(meter, wall)
    cpu = sum(v for k, v in meter.used.items() if k.startswith("server"))
    return {
        "server_cpu_s": round(cpu, 3),
        "server_cpu_us_per_delivery": round(cpu / max(delivered, 1) * 1e6, 2),
        # Redis's part: the inbox's work is largely Redis's (XADD, XREADGROUP, the forward
        # script, XACK), so its rows are compared on both.
        "redis_cpu_us_per_delivery": round(meter.used.get("redis", 0.0) / max(delivered, 1) * 1e6, 2),
        "server_rss_mb": round(sum(s.rss() for s in _as_list(srv)) / 2**20, 1),
        "cpu": cpu_summary(shares),
        "saturated": saturation(shares, ctx.cores),
    }


def _delivery_run(
    ctx: Ctx, srv: Servers, pool: Pool, channels: list[str], fan: int, total: int,
    rate: float | None, window: int | None, uids: list[str], via: str = "publish",
) -> tuple[dict[str, Any], PublishResult]:
    """Publish, wait for the clients, and measure: the core of direct/fanout/paced."""
    pool.broadcast({"op": "reset"})
    meter = meter_for(ctx, srv, pool)
    pub = Publisher(ctx.redis.port, pool.received)
    meter.start()
    res = pub.run(channels, total, fan=fan, rate=rate, window=window, via=via)
    expected = res.sent * fan
    wait_delivered(pool, expected, idle_s=5.0, deadline_s=60.0)
    meter.stop()
    pub.close()
    st = merge(pool.broadcast({"op": "stats"}))
    # Every user is online, so anything in a queue now is late (or stuck), not delivered.
    queued = _queue_len(ctx, uids)
    wall = max((st["last_ns"] or res.last_ns) - res.first_ns, 1) / 1e9
    row: dict[str, Any] = {
        "deliveries": st["unique"], "expected": expected,
        "deliveries_per_s": round(st["unique"] / wall),
        **percentiles(st["lat_ms"]),
        "lost": expected - st["unique"], "duplicated": st["dup"], "out_of_order": st["ooo"],
        **_common(ctx, srv, meter, wall, st["unique"]),
    }
    if queued:
        row["left_in_queue"] = queued
    if res.unheard or res.stalled or res.truncated:
        row.update(unheard=res.unheard, stalled=res.stalled, truncated=res.truncated,
                   published=res.sent)
    if st["foreign"]:
        row["foreign"] = st["foreign"]
    return row, res


def direct(
    ctx: Ctx, target: str, clients: int, messages: int, ack: Ack, rate: float | None = None,
    log_level: str = "warning", window: int = 2000, via: str = "publish",
) -> dict[str, Any]:
    uids = [f"u{i}" for i in range(clients)]
    with serving(ctx, target, log_level) as srv, loadgen(ctx) as pool:
        conn = connect(pool, srv, uids, ack)
        row, _ = _delivery_run(
            ctx, srv, pool, [f"rm.users.{u}" for u in uids], 1, messages, rate,
            None if rate else window, uids, via,
        )
    scenario = "inbox" if via == "inbox" else "paced" if rate else "direct"
    head = {"scenario": scenario, "target": target, "ack": ack, "via": via,
            "log_level": log_level, "clients": clients, "messages": messages,
            "rate_target": rate, "connect_failed": conn["failed"]}

    if ctx.raw_rate and not rate:
        row["share_of_raw_sub"] = round(row["deliveries_per_s"] / ctx.raw_rate, 3)
    return head | row


def _scale_run(
    ctx: Ctx, target: str, clients: int, messages: int, ack: bool, servers: int, window: int
) -> dict[str, Any]:
    uids = [f"s{i}" for i in range(clients)]
    with serving_many(ctx, target, servers) as srvs, loadgen(ctx) as pool:
        failed = 0
        # A fixed, even split: uid i on server i mod n (not the kernel's accept balance).
        # Each server's share is spread over all load-generator processes in turn.
        for k, srv in enumerate(srvs):
            failed += connect(pool, srv, uids[k::servers], ack)["failed"]
        row, _ = _delivery_run(
            ctx, srvs if servers > 1 else srvs[0], pool, [f"rm.users.{u}" for u in uids], 1,
            messages, None, window, uids,
        )
    cpu = row["cpu"]
    # Cores the benchmark's own processes kept busy (not "other": load that is not ours),
    # and that per delivery (shares x window / deliveries, as server_cpu_us_per_delivery):
    # CPU per delivery hardly depends on other load on the machine; rates do.
    busy = cpu["server"] + cpu["clients_sum"] + cpu["publisher"] + cpu["redis"]
    return {"scenario": "scale", "target": target, "ack": ack, "log_level": "warning",
            "servers": servers, "clients": clients, "messages": messages,
            "connect_failed": failed} | row | {
        "bench_cores": round(busy, 2),
        "bench_cpu_us_per_delivery": round(busy / max(row["deliveries_per_s"], 1) * 1e6, 2),
    }


def _max_rate(row: dict[str, Any], servers: int, cores: int) -> float:
    """Deliveries/s the machine allows at this row's CPU per delivery: each server process
    gets at most one core, and all the benchmark's processes together at most ``cores``."""
    srv = row["server_cpu_us_per_delivery"] / 1e6
    bench = row["bench_cpu_us_per_delivery"] / 1e6
    return min(servers / srv if srv else float("inf"), cores / bench if bench else float("inf"))


def scale(
    ctx: Ctx, target: str, clients: int, messages: int, ack: bool, servers: int = 2,
    window: int = 2000,
) -> list[dict[str, Any]]:
    """``direct`` against one server process, then against ``servers`` processes on the same
    Redis (same clients, messages and in-flight window), and the throughput ratio.

    ``ratio_vs_1`` is measured (wall clock). Three figures from CPU per delivery, which other
    load on the machine hardly moves, say what it could be:

    - ``ratio_ceiling``: on this machine, if every process kept the CPU per delivery of the
      one-process row (perfect scaling): bounded by the cores that the load generator, the
      publisher and Redis share with the servers, and by one core per server process.
    - ``ratio_projected``: on this machine, at the CPU per delivery each row really had.
    - ``ratio_own_cores``: the servers alone, each on a core of its own (load elsewhere):
      ``servers`` x one-process server CPU per delivery / the servers' CPU per delivery.
    """
    one = _scale_run(ctx, target, clients, messages, ack, 1, window)
    many = _scale_run(ctx, target, clients, messages, ack, servers, window)
    rate1 = one["deliveries_per_s"]
    many["rate_1_server"] = rate1
    many["ratio_vs_1"] = round(many["deliveries_per_s"] / max(rate1, 1), 2)
    if one["server_cpu_us_per_delivery"] and many["server_cpu_us_per_delivery"]:
        base = _max_rate(one, 1, ctx.cores)
        many["ratio_ceiling"] = round(_max_rate(one, servers, ctx.cores) / base, 2)
        many["ratio_projected"] = round(_max_rate(many, servers, ctx.cores) / base, 2)
        many["ratio_own_cores"] = round(
            servers * one["server_cpu_us_per_delivery"] / many["server_cpu_us_per_delivery"], 2)
    return [one, many]


def fanout(
    ctx: Ctx, target: str, members: int, messages: int, ack: Ack, log_level: str = "warning"
) -> dict[str, Any]:
    uids = [f"m{i}" for i in range(members)]
    with serving(ctx, target, log_level) as srv, loadgen(ctx) as pool:
        ctx.redis.client.sadd("rm:channels:bench:subscribers", *uids)
        conn = connect(pool, srv, uids, ack)
        row, _ = _delivery_run(
            ctx, srv, pool, ["rm.channels.bench"], members, messages, None, 5 * members, uids
        )
    return {"scenario": "fanout", "target": target, "ack": ack, "log_level": log_level,
            "clients": members, "messages": messages, "connect_failed": conn["failed"]} | row


def _queue_len(ctx: Ctx, uids: list[str]) -> int:
    pipe = ctx.redis.client.pipeline(transaction=False)
    for u in uids:
        pipe.llen(f"rm:users:{u}:messages")
    return int(sum(pipe.execute()))


def _queued_seqs(ctx: Ctx, uid: str) -> list[int]:
    seqs = []
    for raw in ctx.redis.client.lrange(f"rm:users:{uid}:messages", 0, -1):
        try:
            seqs.append(parse_payload(json.loads(raw)["payload"])[0])
        except (ValueError, KeyError, TypeError):
            continue
    return seqs


def _wait_queue_stable(ctx: Ctx, uids: list[str], want: int | None, deadline_s: float) -> int:
    """Poll the users' queue lengths until they reach ``want`` or stop changing."""
    end = time.monotonic() + deadline_s
    prev, same = -1, 0
    while time.monotonic() < end:
        n = _queue_len(ctx, uids)
        if want is not None and n >= want:
            return n
        same = same + 1 if n == prev else 0
        if want is None and same >= 3:
            return n
        prev = n
        time.sleep(0.2)
    return prev


def offline(ctx: Ctx, target: str, users: int, per_user: int) -> dict[str, Any]:
    """Queue ``per_user`` messages per absent user, then connect everyone and time the drain."""
    uids = [f"o{i}" for i in range(users)]
    total = users * per_user
    with serving(ctx, target) as srv, loadgen(ctx) as pool:
        qmeter = meter_for(ctx, srv, pool)
        qmeter.start()
        pub = Publisher(ctx.redis.port)
        pub.run([f"rm.users.{u}" for u in uids], total, batch=500)
        pub.close()
        queued = _wait_queue_stable(ctx, uids, total, 60.0)
        qmeter.stop()
        pool.broadcast({"op": "reset"})
        meter = meter_for(ctx, srv, pool)
        meter.start()
        t0 = time.time_ns()
        conn = connect(pool, srv, uids, ack=True)
        wait_delivered(pool, total, idle_s=3.0, deadline_s=120.0)
        meter.stop()
        st = merge(pool.broadcast({"op": "stats"}))
        left = _queue_len(ctx, uids)
        drain_s = max((st["last_ns"] or time.time_ns()) - t0, 1) / 1e9
        row = {
            "scenario": "offline", "target": target, "ack": True, "log_level": "warning",
            "clients": users, "messages": total, "per_user": per_user,
            "queued": queued, "queue_cpu_us_per_msg": round(qmeter.used["server"] / max(total, 1) * 1e6, 2),
            "drain_s": round(drain_s, 3), "deliveries": st["unique"], "expected": total,
            "deliveries_per_s": round(st["unique"] / drain_s),
            # publish-to-receive latency here is mostly time spent queued: not reported
            "lat_p50_ms": None, "lat_p95_ms": None, "lat_p99_ms": None, "lat_max_ms": None,
            "lost": total - st["unique"], "duplicated": st["dup"], "out_of_order": st["ooo"],
            "left_in_queue": left, "connect_failed": conn["failed"],
            **_common(ctx, srv, meter, drain_s, st["unique"]),
        }
    return row


def churn(
    ctx: Ctx, target: str, users: int, messages: int, rate: float,
    on_s: tuple[float, float] = (0.3, 1.5), off_s: tuple[float, float] = (0.1, 0.6),
) -> dict[str, Any]:
    """Users connect and drop (ack mode) while messages are published; then every message is
    accounted for: received, or still in the user's queue, or lost. A final reconnect drains
    the queues so duplicates from re-delivery are counted as a browser would see them."""
    uids = [f"c{i}" for i in range(users)]
    channels = [f"rm.users.{u}" for u in uids]
    with serving(ctx, target) as srv, loadgen(ctx) as pool:
        pool.broadcast({"op": "reset"})
        meter = meter_for(ctx, srv, pool)
        meter.start()
        url = ws_url(srv)
        pool.call([{"op": "churn", "url": url, "uids": part, "on_s": on_s, "off_s": off_s,
                    "seed": 1000 * i} for i, part in enumerate(pool.split(uids))])
        time.sleep(off_s[1])  # let the first wave connect
        pub = Publisher(ctx.redis.port)
        res = pub.run(channels, messages, rate=rate)
        pub.close()
        # Drop everyone right away, with deliveries still in flight: the accounting below
        # must hold exactly then (whatever was not acknowledged goes back to the queue).
        stopped = pool.broadcast({"op": "churn_stop"}, timeout=120)
        queued_total = _wait_queue_stable(ctx, uids, None, 30.0)
        at_stop = merge(pool.broadcast({"op": "stats", "detail": True}))
        lost_at_stop = requeued = 0
        for u, ch in zip(uids, channels, strict=True):
            got = set(at_stop["streams"].get(f"{u}|{ch}", []))
            queued = set(_queued_seqs(ctx, u))
            lost_at_stop += res.per_channel[ch] - len(got | queued)
            requeued += len(got & queued)
        # Final drain: everyone back online once; what never arrives is lost.
        conn = connect(pool, srv, uids, ack=True)
        wait_delivered(pool, res.sent, idle_s=3.0, deadline_s=60.0)
        meter.stop()
        st = merge(pool.broadcast({"op": "stats"}))
        wall = max(st["last_ns"] - res.first_ns, 1) / 1e9
        row = {
            "scenario": "churn", "target": target, "ack": True, "log_level": "warning",
            "clients": users, "messages": res.sent, "rate_target": rate,
            "reconnects": sum(s["cycles"] for s in stopped),
            "deliveries": st["unique"], "expected": res.sent,
            "deliveries_per_s": round(st["unique"] / wall),
            **percentiles(st["lat_ms"]),
            "lost": res.sent - st["unique"], "duplicated": st["dup"], "out_of_order": st["ooo"],
            "queued_at_stop": queued_total, "lost_at_stop": lost_at_stop,
            "requeued_after_receipt": requeued, "left_in_queue": _queue_len(ctx, uids),
            "connect_failed": conn["failed"],
            **_common(ctx, srv, meter, wall, st["unique"]),
        }
    return row


def idle(ctx: Ctx, target: str, sizes: list[int], settle_s: float = 2.0) -> list[dict[str, Any]]:
    """Server RSS per identified, idle socket, measured at each size in turn."""
    rows = []
    with serving(ctx, target) as srv, loadgen(ctx) as pool:
        time.sleep(0.5)
        rss0 = srv.rss()
        have = 0
        for n in sorted(sizes):
            conn = connect(pool, srv, [f"i{i}" for i in range(have, n)], ack=True)
            have = n
            time.sleep(settle_s)
            rss = srv.rss()
            rows.append({
                "scenario": "idle", "target": target, "ack": True, "log_level": "warning",
                "clients": n, "sockets": n - conn["failed"],
                "server_rss_mb": round(rss / 2**20, 1), "rss_before_mb": round(rss0 / 2**20, 1),
                "rss_per_socket_kb": round((rss - rss0) / max(n, 1) / 1024, 1),
                "connect_failed": conn["failed"], "connect_errors": conn["errors"],
            })
    return rows


def connect_rate(ctx: Ctx, target: str, clients: int, ack: bool = True, conc: int = 50) -> dict[str, Any]:
    """Identifies per second: open, join the namespace, identify, confirmed by the ack."""
    with serving(ctx, target) as srv, loadgen(ctx) as pool:
        meter = meter_for(ctx, srv, pool)
        meter.start()
        conn = connect(pool, srv, [f"k{i}" for i in range(clients)], ack, conc=conc)
        meter.stop()
        return {
            "scenario": "connect", "target": target, "ack": ack, "log_level": "warning",
            "clients": clients, "concurrency": conc * len(pool),
            "identifies_per_s": round(conn["ok"] / max(conn["seconds"], 1e-9)),
            "connect_failed": conn["failed"], "connect_errors": conn["errors"],
            **_common(ctx, srv, meter, conn["seconds"], conn["ok"]),
        }
