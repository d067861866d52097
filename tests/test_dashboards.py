"""deploy/: the Grafana dashboard and the Prometheus alert rules name only metrics that a
running server's /metrics has, and promtool accepts (and unit-tests) the rules."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import requests

from tests.support.processes import ROOT

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (requirements-dev.txt)")

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana-dashboard.json"
ALERTS = DEPLOY / "prometheus-alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus-alerts.test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="no promtool (apt-get install prometheus; .ci/run does): the rules are not checked by it")

METRIC = re.compile(r"\brm_[a-z0-9_]+\b")
SUFFIXES = ("_bucket", "_count", "_sum")


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in board["panels"] for target in panel["targets"]]
    exprs += [v["definition"] for v in board["templating"]["list"]]
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def exposed(url: str) -> set[str]:
    """Every metric name /metrics has: its families (HELP lines, even with no sample yet,
    such as a labelled counter nobody incremented) and its samples."""
    names = set()
    for line in requests.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("# HELP "):
            names.add(line.split(" ")[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_the_dashboard_is_importable():
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "redmessenger" and board["__inputs"][0]["name"] == "DS_PROMETHEUS"
    assert len(board["panels"]) >= 8
    titles = [p["title"] for p in board["panels"]]
    assert len(set(titles)) == len(titles)
    ids = [p["id"] for p in board["panels"]]
    assert len(set(ids)) == len(ids)
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}" and panel["targets"], panel["title"]


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_named_exists_on_metrics(server, source):
    exprs = dashboard_exprs() if source == "dashboard" else alert_exprs()
    named = {name for expr in exprs for name in METRIC.findall(expr)}
    assert len(named) >= (12 if source == "dashboard" else 6), named
    have = exposed(server.url)
    missing = sorted(n for n in named if n not in have and not (
        n.endswith(SUFFIXES) and n.rsplit("_", 1)[0] in have))
    assert not missing, f"{source} names metrics that /metrics does not have: {missing}"


def test_the_alerts_cover_what_the_issue_asks():
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    by_name = {rule["alert"]: rule for rule in rules}
    assert {"RedMessengerSubscriptionDown", "RedMessengerQueueDeep", "RedMessengerFailedWrites",
            "RedMessengerListenerLag"} <= set(by_name)
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning") and rule["annotations"]["summary"]


@needs_promtool
def test_promtool_accepts_the_rules():
    result = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_exprs())} rules found" in result.stdout + result.stderr


@needs_promtool
def test_promtool_unit_tests_of_the_alerts_pass():
    result = subprocess.run([PROMTOOL, "test", "rules", ALERT_TESTS.name], cwd=DEPLOY, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
