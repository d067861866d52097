"""The figures the counting tests measured, one JSON line per test, for CI's log.

A test that counts messages calls its `summary` fixture (tests/conftest.py) with what it
counted: `summary(sent=…, received=…, queued=…, lost=…, duplicated=…, out_of_order=…)`.
Each call appends one line to the run's file, with the test's id and how long it had run,
and at the end of the run pytest prints every line (`pytest_terminal_summary`), passing
tests' included, so that the figures README.md and docs/guarantees.md quote can be checked
against a CI log. The file is `$RM_TEST_SUMMARY`, or `var/test-summary.jsonl`; each run
starts it afresh.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .processes import ROOT

ENV = "RM_TEST_SUMMARY"


def summary_path() -> Path:
    return Path(os.environ.get(ENV) or ROOT / "var" / "test-summary.jsonl")


def start_run(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")


def record(path: Path, test: str, seconds: float, figures: dict[str, Any]) -> dict[str, Any]:
    line = {"test": test, **figures, "seconds": round(seconds, 1),
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with path.open("a") as f:
        f.write(json.dumps(line, default=str) + "\n")
    return line


def read_run(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
