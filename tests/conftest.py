"""Fixtures: a real redis-server for the session, and real RedMessenger server processes."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.clients import RMClient
from tests.support.processes import ServerProcess, start_redis

_uids = itertools.count(1)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = start_redis(tmp_path_factory.mktemp("redis"), persist=True)
    yield server
    server.stop()


@pytest.fixture
def r(redis_server: Any) -> redis.Redis:
    """A client of the session's redis-server, emptied before the test."""
    client = redis.Redis(port=redis_server.port)
    client.flushall()
    return client


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def server(redis_server: Any, logs_dir: Path) -> Iterator[ServerProcess]:
    """A server with the default configuration, shared by a test module."""
    proc = ServerProcess(redis_server.port, logs_dir).start()
    yield proc
    proc.stop()


@pytest.fixture
def make_server(redis_server: Any, logs_dir: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers with their own configuration (`make_server(secure_mode=True)`)."""
    started: list[ServerProcess] = []

    def make(**config: Any) -> ServerProcess:
        proc = ServerProcess(redis_server.port, logs_dir, **config)
        started.append(proc)
        return proc.start()

    yield make
    for proc in started:
        proc.stop()


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
