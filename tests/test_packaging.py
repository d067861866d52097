"""The wheel, as a new operator installs it: built by `python -m build` from a clean clone,
installed into a fresh venv, run by the `redmessenger` command in a folder with no
node_modules and no checkout. It serves the page and socket.io-client, and delivers.

The clone is of the last commit: uncommitted changes are not in the wheel.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.clients import connected
from tests.support.processes import ROOT, free_port, wait_until

pytestmark = pytest.mark.slow

NODE_MODULES = ROOT / "node_modules"
BUNDLE = NODE_MODULES / "socket.io-client" / "dist" / "socket.io.min.js"


def timed(what: str, cmd: list[str], timings: dict[str, float], **kwargs: Any) -> str:
    started = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kwargs)
    timings[what] = time.monotonic() - started
    assert result.returncode == 0, f"{what} failed ({result.returncode}):\n{result.stdout[-3000:]}\n" \
                                   f"{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not BUNDLE.is_file():
        pytest.skip("node_modules has no socket.io-client: run `npm ci` (make test does) to build the wheel")
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the wheel is built from a clone")
    base = tmp_path_factory.mktemp("wheel")
    timings: dict[str, float] = {}
    source = base / "clone"
    timed("git clone", ["git", "clone", "-q", str(ROOT), str(source)], timings)
    # What `npm ci` would put there, from the checkout's own (the build checks it against
    # package-lock.json).
    shutil.copytree(NODE_MODULES, source / "node_modules")
    dist = base / "dist"
    timed("python -m build", [sys.executable, "-m", "build", "--outdir", str(dist), str(source)], timings,
          timeout=600)
    wheels = list(dist.glob("redmessenger-*.whl"))
    assert len(wheels) == 1, list(dist.iterdir())
    venv = base / "venv"
    timed("python -m venv", [sys.executable, "-m", "venv", str(venv)], timings, timeout=120)
    timed("pip install the wheel", [str(venv / "bin" / "pip"), "install", "-q", str(wheels[0])], timings,
          timeout=900)
    run_dir = base / "run"  # no node_modules, no templates, no config.json
    run_dir.mkdir()
    print("\ninstall steps on a fresh venv: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    yield {"venv": venv, "wheel": wheels[0], "run": run_dir, "timings": timings, "source": source}


def env(**values: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RM_", "PYTHON", "VIRTUAL_ENV"))}
    return {**clean, "PYTHONUNBUFFERED": "1", **values}


def test_the_wheel_carries_the_pages_and_the_npm_files(installed):
    import zipfile

    assert re.fullmatch(r"redmessenger-\d+\.\d+\.\d+-py3-none-any\.whl", Path(installed["wheel"]).name)
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for path in ("rm_flask/templates/index.html", "rm_flask/templates/admin.html",
                 "rm_flask/static/redmessenger.js", "rm_flask/static/admin.js",
                 "rm_flask/vendor/socket.io.min.js", "rm_flask/vendor/uPlot.iife.min.js",
                 "rm_flask/vendor/uPlot.min.css", "rm_flask/lua/claim.lua", "rm_flask/lua/up.lua"):
        assert path in names, path
    # Every script the code loads (a missing one would fail at import, on the user's machine).
    lua = {p.name for p in (Path(__file__).parents[1] / "rm_flask" / "lua").glob("*.lua")}
    assert {f"rm_flask/lua/{n}" for n in lua} <= names
    bundled = zipfile.ZipFile(installed["wheel"]).read("rm_flask/vendor/socket.io.min.js")
    assert bundled == BUNDLE.read_bytes()


def test_installed_command_serves_and_delivers(installed, redis_server, r, uid):
    venv, run_dir = installed["venv"], installed["run"]
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import rm_flask; print(rm_flask.__file__)"],
                           cwd=run_dir, capture_output=True, text=True, env=env(), timeout=60)
    assert where.stdout.startswith(str(venv)), where  # the installed package, not the checkout

    port = free_port()
    variables = env(RM_REDIS_PORT=str(redis_server.port), RM_WS_PORT=str(port))
    check = subprocess.run([str(venv / "bin" / "redmessenger"), "check"], cwd=run_dir, env=variables,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "MISSING" not in check.stdout and "FAIL" not in check.stdout

    log_path = run_dir / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(venv / "bin" / "redmessenger"), "serve", "--host", "127.0.0.1"],
                                cwd=run_dir, env=variables, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def healthy() -> bool:
            assert proc.poll() is None, log_path.read_text()
            try:
                return requests.get(url + "/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(healthy, 30, "the installed server to be healthy")
        page = requests.get(url + "/", timeout=5)
        assert page.status_code == 200 and "<title>RedMessenger demo</title>" in page.text
        assert 'id="missing-client"' not in page.text
        bundle = requests.get(url + "/vendor/socket.io.min.js", timeout=5)
        assert bundle.status_code == 200
        assert bundle.content == BUNDLE.read_bytes()
        assert requests.get(url + "/static/redmessenger.js", timeout=5).status_code == 200
        assert "missing_files" not in requests.get(url + "/healthz", timeout=5).json()

        tab = connected(url, {"uid": uid, "ack": True})
        try:
            r.publish(f"rm.users.{uid}", "Hello from an installed RedMessenger")
            tab.wait_for(1)
            assert tab.payloads() == ["Hello from an installed RedMessenger"]
        finally:
            tab.close()
        assert "Missing browser files" not in log_path.read_text()
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(15)


def test_installed_gunicorn_settings_serve(installed, redis_server):
    venv, run_dir = installed["venv"], installed["run"]
    port = free_port()
    log_path = run_dir / "gunicorn.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(venv / "bin" / "gunicorn"), "-c", "python:rm_flask.gunicorn_conf", "-b", f"127.0.0.1:{port}",
             "rm_flask.wsgi:app"],
            cwd=run_dir, env=env(RM_REDIS_PORT=str(redis_server.port), RM_LOG_LEVEL="warning"),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        def healthy() -> bool:
            assert proc.poll() is None, log_path.read_text()
            try:
                return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(healthy, 30, "gunicorn with the installed settings to be healthy")
        assert "GeventWebSocketWorker" in log_path.read_text()
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(15)


def test_installed_command_refuses_a_bad_value_in_one_line(installed):
    result = subprocess.run([str(installed["venv"] / "bin" / "redmessenger"), "serve"], cwd=installed["run"],
                            env=env(RM_REDIS_PORT="notaport"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stdout == "" and result.stderr == (
        "config: redis_port='notaport' is invalid: expected an integer from 1 to 65535\n")


@pytest.mark.parametrize("case", ["a file that differs from the lock", "no tarball to check against"])
def test_the_build_refuses_npm_files_it_cannot_check(installed, tmp_path, case):
    source = tmp_path / "clone"
    shutil.copytree(installed["source"], source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    variables = env()
    if case == "a file that differs from the lock":
        bundle = source / "node_modules" / "socket.io-client" / "dist" / "socket.io.min.js"
        bundle.write_bytes(bundle.read_bytes() + b"\n;window.tampered = true;\n")
        expected = ("node_modules/socket.io-client/dist/socket.io.min.js differs from socket.io-client's "
                    "locked tarball (package-lock.json): run `npm ci`")
    else:
        # An empty npm cache, and no npm to fill it.
        variables.update(npm_config_cache=str(tmp_path / "empty-cache"),
                         PATH=os.pathsep.join(p for p in variables["PATH"].split(os.pathsep)
                                              if not (Path(p) / "npm").exists()))
        lock = json.loads((ROOT / "package-lock.json").read_text())
        version = lock["packages"]["node_modules/socket.io-client"]["version"]
        expected = f"the npm tarball of socket.io-client@{version} is not in npm's cache"
    result = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"),
                             str(source)], capture_output=True, text=True, env=variables, timeout=600)
    assert result.returncode != 0
    assert expected in result.stdout + result.stderr, result.stdout[-2000:] + result.stderr[-2000:]
    assert not list((tmp_path / "dist").glob("*.whl"))
