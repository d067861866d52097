"""The markdown table printed at the end of a run, and the comparisons the targets ask for."""

from __future__ import annotations

from typing import Any

COLUMNS = (
    "scenario", "target", "mode", "clients", "msgs", "deliv/s", "p50 ms", "p99 ms", "max ms",
    "lost", "dup", "ooo", "srv µs/deliv", "srv RSS MB", "saturated", "notes",
)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _mode(r: dict[str, Any]) -> str:
    # The baseline relay never asks for acks, whatever the client offered.
    ack = r.get("ack") if r.get("target") != "baseline" else False
    parts = ["batch ack" if ack == "batch" else "ack" if ack else "no-ack"]
    if r.get("via") == "inbox":
        parts.append("via inbox")
    if r.get("log_level") and r["log_level"] != "warning":
        parts.append(f"log {r['log_level']}")
    if r.get("rate_target"):
        parts.append(f"{r['rate_target']:,.0f}/s")
    if r.get("servers"):
        parts.append(f"{r['servers']} proc" + ("s" if r["servers"] > 1 else ""))
    return ", ".join(parts)


def _scale_notes(r: dict[str, Any]) -> list[str]:
    """`scale` rows: the ratio first, then where the CPU went (in cores, over the window)."""
    out = []
    if r.get("ratio_vs_1") is not None:
        out.append(f"**{r['ratio_vs_1']:.2f}x the 1-proc msg/s**")
    if r.get("ratio_ceiling") is not None:
        out.append(f"from CPU/deliv: {r['ratio_projected']:.2f}x projected here, "
                   f"≤ {r['ratio_ceiling']:.2f}x possible here, "
                   f"{r['ratio_own_cores']:.2f}x on own cores")
    cpu = r.get("cpu") or {}
    if cpu:
        each = "+".join(f"{v:.2f}" for v in cpu.get("server_each", []))
        out.append(
            f"cores: server {cpu['server']:.2f}{f' ({each})' if each else ''}, "
            f"loadgen {cpu['clients_sum']:.2f}, publisher {cpu['publisher']:.2f}, "
            f"redis {cpu['redis']:.2f}, other {cpu['other']:.2f}")
    if r.get("server_cpu_s") is not None:
        out.append(f"server CPU {r['server_cpu_s']:.2f} s")
    if r.get("bench_cpu_us_per_delivery") is not None:
        out.append(f"all bench processes {r['bench_cpu_us_per_delivery']:.0f} µs/deliv")
    return out


def _notes(r: dict[str, Any]) -> str:
    keys = (
        ("share_of_raw_sub", "of raw sub {:.0%}"), ("rss_per_socket_kb", "{} KB/socket"),
        ("identifies_per_s", "{:,} identifies/s"), ("drain_s", "drain {} s"),
        ("queue_cpu_us_per_msg", "queueing {} µs/msg"), ("queued_at_stop", "{} queued at stop"),
        ("requeued_after_receipt", "{} requeued after receipt"),
        ("left_in_queue", "{} left in queue"), ("reconnects", "{} reconnects"),
        ("connect_failed", "{} connects failed"), ("stalled", "stalled={}"),
        ("truncated", "publishing cut at the time cap={}"),
        ("error", "ERROR {}"),
    )
    out = _scale_notes(r) if r.get("scenario") == "scale" else []
    for key, fmt in keys:
        v = r.get(key)
        if v or (key == "share_of_raw_sub" and v is not None):
            out.append(fmt.format(v))
    return "; ".join(out)


def _row(r: dict[str, Any]) -> list[str]:
    if r["scenario"] == "raw_subscriber":
        return ["raw_subscriber", r["target"], "psubscribe rm.*", "1", _fmt(r["messages"]),
                _fmt(r["deliveries_per_s"]), "-", "-", "-", "-", "-", "-",
                _fmt(r["cpu_us_per_msg"]), "-", "subscriber", "the ceiling for one process"]
    return [
        r["scenario"], r.get("target", "?"), _mode(r) if "error" not in r else "-",
        _fmt(r.get("clients")), _fmt(r.get("messages")), _fmt(r.get("deliveries_per_s")),
        _fmt(r.get("lat_p50_ms")), _fmt(r.get("lat_p99_ms")), _fmt(r.get("lat_max_ms")),
        _fmt(r.get("lost")), _fmt(r.get("duplicated")), _fmt(r.get("out_of_order")),
        _fmt(r.get("server_cpu_us_per_delivery")), _fmt(r.get("server_rss_mb")),
        _fmt(r.get("saturated")), _notes(r),
    ]


def _find(rows: list[dict[str, Any]], **want: Any) -> dict[str, Any] | None:
    for r in rows:
        if "error" not in r and all(r.get(k) == v for k, v in want.items()):
            return r
    return None


def summary(rows: list[dict[str, Any]]) -> list[str]:
    """The figures the issue's targets are stated in, where both rows exist."""
    lines = []
    cpu = "server_cpu_us_per_delivery"

    def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
        return a[cpu] / b[cpu] if a and b and a.get(cpu) and b.get(cpu) else None

    base_d = _find(rows, scenario="direct", target="baseline")
    noack = _find(rows, scenario="direct", target="ours", ack=False)
    ack = _find(rows, scenario="direct", target="ours", ack=True, log_level="warning")
    batch = _find(rows, scenario="direct", target="ours", ack="batch")
    goals = [
        ("direct, no acks: CPU per delivery vs the baseline relay", ratio(noack, base_d), 0.6),
        ("direct, batch acks: CPU per delivery vs our no-ack", ratio(batch, noack), 1.25),
        ("direct, per-message acks: CPU per delivery vs our no-ack", ratio(ack, noack), None),
        ("fanout, batch acks: CPU per delivery vs the baseline relay",
         ratio(_find(rows, scenario="fanout", target="ours", ack="batch"),
               _find(rows, scenario="fanout", target="baseline")), 0.5),
    ]
    for what, value, goal in goals:
        if value is not None:
            verdict = "" if goal is None else f" (goal <= {goal}x: {'met' if value <= goal else 'not met'})"
            lines.append(f"- {what}: {value:.2f}x{verdict}")
    for r in rows:
        if r["scenario"] == "paced" and "error" not in r:
            goal = " (goal <= 10 ms)" if r.get("ack") == "batch" else ""
            lines.append(f"- paced {r['target']} {_mode(r)}: p99 {r['lat_p99_ms']} ms{goal}, "
                         f"{r.get(cpu)} µs server CPU per message")
    for r in rows:
        if r["scenario"] == "idle" and "error" not in r and r["clients"] == max(
            x.get("clients", 0) for x in rows if x["scenario"] == "idle"
        ):
            lines.append(f"- idle {r['target']} at {r['clients']:,} sockets: "
                         f"{r['rss_per_socket_kb']} KB per socket (goal <= 40 KB)")
    inbox = _find(rows, scenario="inbox", target="ours")
    if batch and inbox and batch[cpu]:
        lines.append(
            f"- inbox vs PUBLISH (direct, batch acks): {inbox['deliveries_per_s']:,} vs "
            f"{batch['deliveries_per_s']:,} deliveries/s; server CPU {inbox[cpu]} vs {batch[cpu]} "
            f"µs per delivery ({ratio(inbox, batch):.2f}x), Redis CPU "
            f"{inbox.get('redis_cpu_us_per_delivery')} vs {batch.get('redis_cpu_us_per_delivery')} µs")
    info = _find(rows, scenario="direct", target="ours", ack=True, log_level="info")
    if ack and info and ack[cpu]:
        lines.append(f"- log_level info costs {info[cpu] / ack[cpu] - 1:+.0%} CPU per message")
    for ack_mode in (True, False):
        one = _find(rows, scenario="scale", ack=ack_mode, servers=1)
        many = next((r for r in rows if r["scenario"] == "scale" and "error" not in r
                     and r.get("ack") == ack_mode and r.get("servers", 1) > 1), None)
        if one and many and many.get("ratio_vs_1") is not None:
            ceiling = (f"; from CPU per delivery: {many['ratio_projected']:.2f}x projected on "
                       f"this machine, at most {many['ratio_ceiling']:.2f}x possible here (the "
                       f"servers share the cores with the load generator, publisher and Redis), "
                       f"{many['ratio_own_cores']:.2f}x with a core per server"
                       ) if many.get("ratio_ceiling") is not None else ""
            lines.append(
                f"- scale ({'ack' if ack_mode else 'no-ack'}): {many['servers']} processes deliver "
                f"{many['ratio_vs_1']:.2f}x the msg/s of 1 ({many['deliveries_per_s']:,} vs "
                f"{one['deliveries_per_s']:,}; target >= 1.6x){ceiling}; server CPU per delivery "
                f"{one[cpu]} -> {many[cpu]} µs, lost {one['lost']} / {many['lost']}")
            other = max(one["cpu"].get("other", 0.0), many["cpu"].get("other", 0.0))
            if other >= 0.2:
                lines.append(f"  - disturbed: {other:.2f} cores of other load during these rows; "
                             "their rates and ratio are not reliable, run it again")
    return lines


def render(rows: list[dict[str, Any]]) -> str:
    body = [r for r in rows if r["scenario"] != "machine"]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_row(r)) + " |" for r in body]
    extra = summary(body)
    if extra:
        lines += ["", *extra]
    return "\n".join(lines)
