"""Fixtures: a real redis-server for the session, and real RedMessenger server processes.

Isolation: the session's Redis is emptied (FLUSHALL) only while no RedMessenger process is
connected to it, never under a running server: to a server, a FLUSHALL is Redis losing
its data, and it would rejoin as a new era in the middle of the test. Tests that share a
module's running server keep apart by using uids of their own (the `uid` fixture); tests
that start their own servers (`make_server`) start them on an empty Redis. Rejoining is
tested on purpose, in the modules that inject that fault.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from rm_flask import names
from tests.support import summary as figures
from tests.support.clients import RMClient
from tests.support.processes import ServerProcess, start_redis
from tests.support.proxy import Proxy

_uids = itertools.count(1)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = start_redis(tmp_path_factory.mktemp("redis"), persist=True)
    yield server
    server.stop()


def servers_connected(client: redis.Redis) -> list[str]:
    """The RedMessenger processes subscribed to this Redis, by the names of their pub/sub
    connections (`rm-server-$id`, rm_flask/names.py): counted from Redis, not from our own
    records. (An app made in-process with `start=False` names its connections too, but
    never subscribes: it has no view to lose.)"""
    prefix = names.client_name("")
    return sorted({c["name"] for c in client.client_list()
                   if c.get("name", "").startswith(prefix) and int(c.get("psub", 0)) + int(c.get("sub", 0))})


def empty_if_idle(client: redis.Redis) -> bool:
    """FLUSHALL, unless a server is subscribed: then the test relies on uids of its own,
    and only the identify failure counts are cleared. Those are per client address, and
    every test's client is 127.0.0.1: one test's refusals would rate-limit the next."""
    if servers_connected(client):
        stale = list(client.scan_iter(names.identify_failures_key("*", "*"), count=1000))
        if stale:
            client.delete(*stale)
        return False
    client.flushall()
    return True


def era(client: redis.Redis) -> bytes | None:
    return client.get(names.CLUSTER_ERA_KEY)


@pytest.fixture
def r(redis_server: Any) -> redis.Redis:
    """A client of the session's redis-server, emptied before the test if no server runs on it."""
    client = redis.Redis(port=redis_server.port)
    empty_if_idle(client)
    return client


@contextlib.contextmanager
def shared_server(redis_server: Any, logs_dir: Path, **config: Any) -> Iterator[ServerProcess]:
    """A server that several tests share, started on an empty Redis (if no other server
    runs on it); afterwards, check that Redis kept its data under it all along (the era
    it started in is still there), so that none of its tests ran a rejoin by accident."""
    client = redis.Redis(port=redis_server.port)
    empty_if_idle(client)  # a module may keep a server of its own beside this one
    proc = ServerProcess(redis_server.port, logs_dir, **config).start()
    started_in = era(client)
    try:
        yield proc
    finally:
        proc.stop()
    assert started_in is not None and era(client) == started_in, (
        f"the era changed under a shared server ({started_in!r} -> {era(client)!r}): a test emptied Redis")


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def server(redis_server: Any, logs_dir: Path) -> Iterator[ServerProcess]:
    """A server with the default configuration, shared by a test module."""
    with shared_server(redis_server, logs_dir) as proc:
        yield proc


@pytest.fixture
def make_server(redis_server: Any, logs_dir: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers with their own configuration (`make_server(secure_mode=True)`), on a
    Redis emptied before the test (unless a shared server runs on it)."""
    empty_if_idle(redis.Redis(port=redis_server.port))
    started: list[ServerProcess] = []

    def make(**config: Any) -> ServerProcess:
        proc = ServerProcess(redis_server.port, logs_dir, **config)
        started.append(proc)
        return proc.start()

    yield make
    for proc in started:
        proc.stop()


@pytest.fixture
def proxy_to() -> Iterator[Callable[[ServerProcess], Proxy]]:
    """`proxy_to(server)`: a started `Proxy` in front of it (tests/support/proxy.py), through
    which a tab can vanish; every one is stopped after the test, whatever happened."""
    made: list[Proxy] = []

    def make(server: ServerProcess) -> Proxy:
        proxy = Proxy(server.port)
        made.append(proxy)
        return proxy.start()

    yield make
    for proxy in made:
        proxy.stop()


@pytest.fixture
def clients() -> Iterator[Callable[..., RMClient]]:
    """Make clients that are all closed after the test."""
    made: list[RMClient] = []

    def make(url: str, identifier: Any = None, **kwargs: Any) -> RMClient:
        client = RMClient(url, **kwargs).connect()
        made.append(client)
        if identifier is not None:
            reply = client.identify(identifier)
            assert reply and reply.get("ok"), reply
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def uid(request: pytest.FixtureRequest) -> str:
    """A uid no other test uses."""
    return f"u{next(_uids)}-{request.node.name[:40].replace('[', '_').replace(']', '')}"


### The figures the tests counted (tests/support/summary.py) ###


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controlling process starts the run's file
        figures.start_run(figures.summary_path())


@pytest.fixture
def summary(request: pytest.FixtureRequest) -> Callable[..., dict[str, Any]]:
    """`summary(sent=…, lost=…, …)`: one line of this test's figures for the run's summary."""
    started = time.monotonic()

    def record(**counted: Any) -> dict[str, Any]:
        took = time.monotonic() - started
        return figures.record(figures.summary_path(), request.node.nodeid, took, counted)

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = figures.read_run(figures.summary_path())
    if not lines:
        return
    terminalreporter.section(f"figures counted by the tests ({figures.summary_path()})")
    for line in lines:
        terminalreporter.write_line(json.dumps(line, default=str))
