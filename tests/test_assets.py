"""A checkout served without `npm ci`: one clear warning, a note on /healthz, a page that
says what is missing, and `check` that fails. Then the same checkout with node_modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.support.processes import ServerProcess, checkout_without_npm


@pytest.fixture(scope="module")
def bare_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return checkout_without_npm(tmp_path_factory.mktemp("no-npm"))


@pytest.fixture(scope="module")
def bare_server(redis_server, logs_dir, bare_checkout):
    # gunicorn, as the operator deployed it.
    proc = ServerProcess(redis_server.port, logs_dir, gunicorn=True, root=bare_checkout).start()
    yield proc
    proc.stop()


def test_one_warning_at_start_up(bare_server):
    warnings = [line for line in bare_server.log().splitlines() if "Missing browser files" in line]
    assert len(warnings) == 1, bare_server.log()
    assert "socket.io.min.js" in warnings[0] and "npm ci" in warnings[0]
    assert "uPlot.iife.min.js" in warnings[0]
    assert " WARNING " in warnings[0]


def test_healthz_notes_it_and_stays_healthy(bare_server):
    status, health = bare_server.health()
    assert status == 200 and health["ok"] is True
    assert health["missing_files"] == {
        "/vendor/socket.io.min.js": "the demo page and the example client",
        "/vendor/uPlot.iife.min.js": "the charts of /admin",
        "/vendor/uPlot.min.css": "the charts of /admin",
    }


def test_the_page_says_what_is_missing(bare_server):
    page = requests.get(bare_server.url + "/", timeout=5).text
    assert 'id="missing-client"' in page
    assert "socket.io-client is not installed" in page and "npm ci" in page
    vendor = requests.get(bare_server.url + "/vendor/socket.io.min.js", timeout=5)
    assert vendor.status_code == 404 and "npm ci" in vendor.text


def test_check_fails_and_names_the_files(bare_checkout, redis_server):
    result = subprocess.run(
        [sys.executable, "-m", "rm_flask", "check"], cwd=bare_checkout, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "RM_REDIS_PORT": str(redis_server.port)}, timeout=30)
    assert result.returncode == 1, result.stdout + result.stderr
    missing = [line for line in result.stdout.splitlines() if line.startswith("MISSING")]
    assert [line.split()[1] for line in missing] == [
        "/vendor/socket.io.min.js:", "/vendor/uPlot.iife.min.js:", "/vendor/uPlot.min.css:"]


def test_the_checkout_with_node_modules_has_no_note(server):
    status, health = server.health()
    assert status == 200 and "missing_files" not in health
    assert "Missing browser files" not in server.log()
    page = requests.get(server.url + "/", timeout=5).text
    assert 'id="missing-client"' not in page
    vendor = requests.get(server.url + "/vendor/socket.io.min.js", timeout=5)
    assert vendor.status_code == 200 and vendor.headers["Content-Type"].startswith("application/javascript")
