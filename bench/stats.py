"""Merging worker reports, latency percentiles, and which side saturated."""

from __future__ import annotations

from array import array
from typing import Any

# A process at or above this share of one core is taken as the bottleneck.
BUSY = 0.85


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    lat = array("d")
    out: dict[str, Any] = {
        "received": 0, "unique": 0, "dup": 0, "ooo": 0, "foreign": 0, "bubble_false": 0,
        "first_ns": 0, "last_ns": 0, "events": {}, "streams": {},
    }
    for rep in reports:
        for key in ("received", "unique", "dup", "ooo", "foreign", "bubble_false"):
            out[key] += rep[key]
        if rep["first_ns"] and (not out["first_ns"] or rep["first_ns"] < out["first_ns"]):
            out["first_ns"] = rep["first_ns"]
        out["last_ns"] = max(out["last_ns"], rep["last_ns"])
        chunk = array("d")
        chunk.frombytes(rep["lat_ms"])
        lat.extend(chunk)
        for name, count in rep["events"].items():
            out["events"][name] = out["events"].get(name, 0) + count
        out["streams"].update(rep.get("streams", {}))
    out["lat_ms"] = lat
    return out


def percentiles(lat: array) -> dict[str, float | None]:
    if not lat:
        return {"lat_p50_ms": None, "lat_p95_ms": None, "lat_p99_ms": None, "lat_max_ms": None}
    s = sorted(lat)
    n = len(s)

    def pick(q: float) -> float:
        return round(s[min(n - 1, int(q * n))], 2)

    return {
        "lat_p50_ms": pick(0.50), "lat_p95_ms": pick(0.95), "lat_p99_ms": pick(0.99),
        "lat_max_ms": round(s[-1], 2),
    }


def _servers(shares: dict[str, float]) -> list[float]:
    """The server processes' shares: ``server``, or ``server0``, ``server1``… when several."""
    return [v for k, v in shares.items() if k.startswith("server")] or [0.0]


def saturation(shares: dict[str, float], cores: int) -> str:
    """Name the side that ran out of CPU: a server process, a load-generator process, the
    publisher, Redis, or the machine as a whole (everything together, including processes
    that are not the benchmark's, near all cores); else "none"."""
    if max(_servers(shares)) >= BUSY:
        return "server"
    clients = [v for k, v in shares.items() if k.startswith("client")]
    if clients and max(clients) >= BUSY:
        return "client"
    if shares.get("publisher", 0.0) >= BUSY:
        return "publisher"
    if shares.get("redis", 0.0) >= BUSY:
        return "redis"
    if sum(shares.values()) >= BUSY * cores:  # includes "other": load that is not ours
        return "machine"
    return "none"


def cpu_summary(shares: dict[str, float]) -> dict[str, Any]:
    clients = [v for k, v in shares.items() if k.startswith("client")] or [0.0]
    servers = _servers(shares)
    each = {"server_each": [round(v, 2) for v in servers]} if len(servers) > 1 else {}
    return {
        "server": round(sum(servers), 2),  # all server processes together
        **each,
        "clients_max": round(max(clients), 2),
        "clients_sum": round(sum(clients), 2),
        "publisher": round(shares.get("publisher", 0.0), 2),
        "redis": round(shares.get("redis", 0.0), 2),
        "other": round(shares.get("other", 0.0), 2),
    }
