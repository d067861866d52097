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
    parts = ["ack" if r.get("ack") and r.get("target") != "baseline" else "no-ack"]
    if r.get("log_level") and r["log_level"] != "warning":
        parts.append(f"log {r['log_level']}")
    if r.get("rate_target"):
        parts.append(f"{r['rate_target']:,.0f}/s")
    return ", ".join(parts)


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
    out = []
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
    base_d = _find(rows, scenario="direct", target="baseline")
    for ack in (True, False):
        ours = _find(rows, scenario="direct", target="ours", ack=ack, log_level="warning")
        if base_d and ours and ours[cpu]:
            lines.append(f"- direct ({'ack' if ack else 'no-ack'}): "
                         f"{base_d[cpu] / ours[cpu]:.2f}x cheaper per message than the baseline "
                         f"(target >= 2.5x), lost {ours['lost']}")
    base_f = _find(rows, scenario="fanout", target="baseline")
    ours_f = _find(rows, scenario="fanout", target="ours")
    if base_f and ours_f and ours_f[cpu]:
        lines.append(f"- fanout: {base_f[cpu] / ours_f[cpu]:.2f}x cheaper per delivery than the "
                     f"baseline (target >= 3x)")
    for r in rows:
        if r["scenario"] == "paced" and "error" not in r:
            lines.append(f"- paced {r['target']}: p99 {r['lat_p99_ms']} ms (target <= 10 ms)")
    for r in rows:
        if r["scenario"] == "idle" and "error" not in r and r["clients"] == max(
            x.get("clients", 0) for x in rows if x["scenario"] == "idle"
        ):
            lines.append(f"- idle {r['target']} at {r['clients']:,} sockets: "
                         f"{r['rss_per_socket_kb']} KB per socket (target <= 40 KB)")
    ack = _find(rows, scenario="direct", target="ours", ack=True, log_level="warning")
    noack = _find(rows, scenario="direct", target="ours", ack=False)
    if ack and noack and noack[cpu]:
        lines.append(f"- ack mode costs {ack[cpu] / noack[cpu] - 1:+.0%} CPU per message over "
                     f"no-ack (target <= +25%)")
    info = _find(rows, scenario="direct", target="ours", ack=True, log_level="info")
    if ack and info and ack[cpu]:
        lines.append(f"- log_level info costs {info[cpu] / ack[cpu] - 1:+.0%} CPU per message")
    return lines


def render(rows: list[dict[str, Any]]) -> str:
    body = [r for r in rows if r["scenario"] != "machine"]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_row(r)) + " |" for r in body]
    extra = summary(body)
    if extra:
        lines += ["", *extra]
    return "\n".join(lines)
