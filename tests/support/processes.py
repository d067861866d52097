"""Real processes for the tests: redis-server and the RedMessenger server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from rm_flask.embedded import RedisServer

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str | Callable[[], str],
               interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds.
    `what` may be a function, to say how things stand when the wait fails."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {said}")
        time.sleep(interval)


class ServerProcess:
    """`python -m rm_flask` (or gunicorn) in a child process, on a port of its own."""

    def __init__(self, redis_port: int, log_dir: Path, gunicorn: bool = False, workers: int = 1,
                 root: Path = ROOT, **config: Any) -> None:
        self.port = config.pop("ws_port", None) or free_port()
        self.redis_port = redis_port
        self.config = {"log_level": "info", "identify_timeout": 10, **config}
        self.log_path = log_dir / f"server-{self.port}.log"
        self.gunicorn = gunicorn
        self.workers = workers  # gunicorn -w: that many RedMessenger processes on one port
        self.root = root  # the folder it runs in (and imports rm_flask from)
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RM_")}
        env.update(RM_REDIS_HOST="127.0.0.1", RM_REDIS_PORT=str(self.redis_port), RM_WS_PORT=str(self.port))
        for key, value in self.config.items():
            env["RM_" + key.upper()] = (
                "true" if value is True else "false" if value is False else str(value)
            )
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self, timeout: float = 20) -> ServerProcess:
        if self.gunicorn:
            cmd = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{self.port}",
                   "-w", str(self.workers), "wsgi:app"]
        else:
            cmd = [sys.executable, "-m", "rm_flask", "--host", "127.0.0.1"]
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            cmd, cwd=self.root, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        wait_until(self._healthy, timeout, f"server on port {self.port} to be healthy (log: {self.log_path})")
        return self

    def _healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()[-3000:]}")
        try:
            return requests.get(self.url + "/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def health(self) -> tuple[int, dict[str, Any]]:
        r = requests.get(self.url + "/healthz", timeout=5)
        return r.status_code, r.json()

    def metric(self, name: str) -> float:
        """One sample of the server's /metrics, 0 if absent."""
        for line in requests.get(self.url + "/metrics", timeout=5).text.splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def kill(self) -> None:
        """`kill -9`: no chance to clean up."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> ServerProcess:
        self.kill()
        self.restarts += 1
        return self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def checkout_without_npm(folder: Path) -> Path:
    """The repository's server files in `folder`, as `pip install -r requirements.txt` and
    a copy of the code leave them: no node_modules, and no package in the venv to fall back on."""
    import shutil

    for name in ("rm_flask", "templates", "static"):
        shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("wsgi.py", "gunicorn.conf.py", "config.json"):
        shutil.copy(ROOT / name, folder / name)
    return folder


def start_redis(data_dir: Path, port: int | None = None, persist: bool = False,
                fsync_always: bool = False) -> RedisServer:
    return RedisServer(port or free_port(), data_dir, persist=persist, fsync_always=fsync_always).start()
