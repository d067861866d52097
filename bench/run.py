"""Run the RedMessenger benchmark: ``python -m bench.run [--quick] [--only S] [--target T]``.

Starts its own redis-server and, per scenario, a fresh server under test under gunicorn;
prints one JSON line per run and a markdown table at the end; stops everything it started,
also on errors and Ctrl-C.
"""

from __future__ import annotations

if __package__ in (None, ""):  # ``python bench/run.py``: make ``bench`` importable
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, fields, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from bench import rawsub, scenarios  # noqa: E402
from bench.procs import RedisServer, raise_nofile, target_available  # noqa: E402
from bench.scenarios import Ctx  # noqa: E402
from bench.table import render  # noqa: E402

SCENARIOS = ("raw", "direct", "inbox", "fanout", "paced", "idle", "offline", "churn", "connect", "scale")


@dataclass(frozen=True)
class Sizes:
    direct_clients: int = 1000
    direct_msgs: int = 60000
    fan_members: int = 1000
    fan_msgs: int = 100
    paced_clients: int = 1000
    paced_rate: float = 5000.0
    paced_msgs: int = 25000
    idle: tuple[int, ...] = (1000, 5000)
    offline_users: int = 500
    offline_per_user: int = 40
    churn_users: int = 500
    churn_msgs: int = 16000
    churn_rate: float = 4000.0
    connect: int = 2000
    raw: int = 200000
    scale_clients: int = 1000
    scale_msgs: int = 60000
    settle_s: float = 2.0  # idle: wait after connecting before reading RSS


QUICK = Sizes(
    direct_clients=100, direct_msgs=5000, fan_members=100, fan_msgs=20, paced_clients=100,
    paced_rate=1000.0, paced_msgs=2000, idle=(200, 500), offline_users=50, offline_per_user=20,
    churn_users=50, churn_msgs=2000, churn_rate=1000.0, connect=200, raw=50000, scale_clients=100,
    scale_msgs=3000, settle_s=1.0,
)

Step = Callable[[Ctx], list[dict[str, Any]]]


def plan(s: Sizes, targets: list[str], only: str | None) -> list[tuple[str, str, Step]]:
    """(scenario, target, step) in run order; the raw subscriber first, for the share."""
    steps: list[tuple[str, str, Step]] = [
        ("raw", "redis", lambda c: [rawsub.measure(c.redis.port, s.raw)]),
    ]
    inbox_peers: list[Step] = []  # the PUBLISH rows the inbox rows are read beside
    for t in targets:
        ours = t == "ours"
        # The baseline ignores the ack flag; it is run as the seed's no-ack client.
        steps.append(("direct", t, lambda c, t=t, a=ours: [
            scenarios.direct(c, t, s.direct_clients, s.direct_msgs, ack=a)]))
        if ours:
            steps.append(("direct", t, lambda c, t=t: [
                scenarios.direct(c, t, s.direct_clients, s.direct_msgs, ack=False)]))
            steps.append(("direct", t, lambda c, t=t: [
                scenarios.direct(c, t, s.direct_clients, s.direct_msgs, ack=True,
                                 log_level="info")]))
            # Batch acks (SPEC §4), what the JS client sends by default.
            inbox_peers.append(lambda c, t=t: [
                scenarios.direct(c, t, s.direct_clients, s.direct_msgs, ack="batch")])
            steps.append(("direct", t, inbox_peers[-1]))
            # The same messages added to the inbox (SPEC §9) instead of PUBLISHed, beside
            # the PUBLISH row above (with --only inbox, the two run together).
            steps.append(("inbox", t, lambda c, t=t: [
                scenarios.direct(c, t, s.direct_clients, s.direct_msgs, ack="batch", via="inbox")]))
            steps.append(("fanout", t, lambda c, t=t: [
                scenarios.fanout(c, t, s.fan_members, s.fan_msgs, ack="batch")]))
            steps.append(("paced", t, lambda c, t=t: [
                scenarios.direct(c, t, s.paced_clients, s.paced_msgs, ack="batch", rate=s.paced_rate)]))
        steps.append(("fanout", t, lambda c, t=t, a=ours: [
            scenarios.fanout(c, t, s.fan_members, s.fan_msgs, ack=a)]))
        steps.append(("paced", t, lambda c, t=t, a=ours: [
            scenarios.direct(c, t, s.paced_clients, s.paced_msgs, ack=a, rate=s.paced_rate)]))
        steps.append(("idle", t, lambda c, t=t: scenarios.idle(c, t, list(s.idle), s.settle_s)))
        if ours:  # the baseline has no queue: an offline drain has nothing to measure
            steps.append(("offline", t, lambda c, t=t: [
                scenarios.offline(c, t, s.offline_users, s.offline_per_user)]))
        steps.append(("churn", t, lambda c, t=t: [
            scenarios.churn(c, t, s.churn_users, s.churn_msgs, s.churn_rate)]))
        steps.append(("connect", t, lambda c, t=t: [scenarios.connect_rate(c, t, s.connect)]))
        if ours:  # 1 vs 2 server processes on one Redis: the multi-process figure
            for ack in (True, False):
                steps.append(("scale", t, lambda c, t=t, a=ack: scenarios.scale(
                    c, t, s.scale_clients, s.scale_msgs, ack=a)))
    if only:
        keep = {only, "raw"} if only == "direct" else {only}
        steps = [st for st in steps if st[0] in keep or (
            only == "inbox" and st[2] in inbox_peers)]
    order = {name: i for i, name in enumerate(SCENARIOS)}
    # Group by scenario so baseline and ours rows of one kind run back to back.
    return sorted(steps, key=lambda st: order[st[0]])


def with_overrides(sizes: Sizes, items: list[str]) -> Sizes:
    """Apply ``name=value`` overrides, typed like the field they replace."""
    known = {f.name: f for f in fields(Sizes)}
    changes: dict[str, Any] = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in known or not value:
            raise ValueError(f"--set {item!r}: expected one of {', '.join(known)} = value")
        current = getattr(sizes, name)
        if isinstance(current, tuple):
            changes[name] = tuple(int(v) for v in value.split(","))
        else:
            changes[name] = type(current)(value)
    return replace(sizes, **changes)


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=SCENARIOS, help="run one scenario (both targets)")
    ap.add_argument("--quick", action="store_true", help="small sizes, about 30 s")
    ap.add_argument("--target", choices=("baseline", "ours"), help="default: both")
    ap.add_argument("--procs", type=int, default=0,
                    help="load-generator processes (default: number of cores, at least 2)")
    ap.add_argument("--json-out", type=Path, help="also write the JSON lines to this file")
    ap.add_argument("--workdir", type=Path,
                    help="keep server logs and Redis files here (default: a temporary folder)")
    ap.add_argument("--set", action="append", default=[], metavar="SIZE=N",
                    help="override one size, e.g. --set direct_msgs=200000 --set idle=1000,10000")
    args = ap.parse_args(argv)

    targets = [args.target] if args.target else ["baseline", "ours"]
    missing = [t for t in targets if not target_available(t)]
    if missing and args.target:
        print(f"target {missing[0]} is not available (no wsgi.py in the repo)", file=sys.stderr)
        return 2
    targets = [t for t in targets if t not in missing]
    try:
        sizes = with_overrides(QUICK if args.quick else Sizes(), args.set)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    cores = os.cpu_count() or 1
    nofile = raise_nofile()
    rows: list[dict[str, Any]] = []
    out = args.json_out.open("w") if args.json_out else None

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        line = json.dumps(row, sort_keys=False)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    failed = 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rm-bench-") as tmpdir:
        tmp = tmpdir
        if args.workdir:
            args.workdir.mkdir(parents=True, exist_ok=True)
            tmp = str(args.workdir)
        redis = RedisServer(Path(tmp))
        try:
            info = machine() | {"redis": redis.version(), "load_procs": args.procs or max(cores, 2),
                                "nofile": nofile, "quick": args.quick, "targets": targets}
            emit({"scenario": "machine", **info})
            ctx = Ctx(redis=redis, workdir=Path(tmp), procs=info["load_procs"], cores=cores)
            for name, target, step in plan(sizes, targets, args.only):
                t_step = time.monotonic()
                try:
                    for row in step(ctx):
                        row["run_s"] = round(time.monotonic() - t_step, 1)
                        if name == "raw":
                            ctx.raw_rate = float(row["deliveries_per_s"])
                        emit(row)
                except Exception as exc:  # one broken scenario must not hide the others
                    failed += 1
                    traceback.print_exc(file=sys.stderr)
                    emit({"scenario": name, "target": target, "error": repr(exc)[:300]})
        except KeyboardInterrupt:
            print("interrupted; stopping everything", file=sys.stderr)
            return 130
        finally:
            redis.close()
            if out:
                out.close()
    print(f"\n{render(rows)}\n\n_total {time.monotonic() - started:.0f} s_")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
