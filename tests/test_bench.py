"""The benchmark runs end to end (quick sizes), so that `make bench` cannot rot unseen."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.processes import ROOT


def quick_rows(tmp_path, scenario: str) -> tuple[list[dict], str]:
    """Run one scenario of the benchmark at its quick sizes against our server: its JSON
    rows, and the table it printed."""
    out = tmp_path / "bench.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--only", scenario, "--target", "ours",
         "--json-out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return [row for row in rows if row.get("scenario") == scenario], done.stdout


def test_quick_direct_benchmark_delivers_everything(tmp_path):
    direct, _ = quick_rows(tmp_path, "direct")
    assert [(r["ack"], r["log_level"]) for r in direct] == [
        (True, "warning"), (False, "warning"), (True, "info"), ("batch", "warning")]
    for row in direct:
        assert row["deliveries"] == row["expected"] > 0 and row["lost"] == 0, row
        assert row["server_cpu_us_per_delivery"] > 0


def test_quick_scale_benchmark_splits_clients_over_two_servers(tmp_path):
    scale, table = quick_rows(tmp_path, "scale")
    assert [(r["ack"], r["servers"]) for r in scale] == [
        (True, 1), (True, 2), (False, 1), (False, 2)]
    for row in scale:
        assert row["deliveries"] == row["expected"] > 0 and row["lost"] == 0, row
        assert row["connect_failed"] == 0 and row["server_cpu_s"] > 0, row
    for row in scale[1::2]:
        assert len(row["cpu"]["server_each"]) == 2, row
        assert all(share > 0 for share in row["cpu"]["server_each"]), "both servers delivered"
        assert row["ratio_vs_1"] > 0 and row["ratio_ceiling"] > 0, row
    assert "x the 1-proc msg/s" in table


def test_quick_inbox_benchmark_runs_beside_its_publish_row(tmp_path):
    rows, table = quick_rows(tmp_path, "inbox")
    [inbox] = rows
    assert inbox["via"] == "inbox" and inbox["ack"] == "batch", inbox
    assert inbox["deliveries"] == inbox["expected"] > 0 and inbox["lost"] == 0, inbox
    assert inbox["redis_cpu_us_per_delivery"] > 0
    assert "inbox vs PUBLISH (direct, batch acks)" in table, "the PUBLISH row ran beside it"
