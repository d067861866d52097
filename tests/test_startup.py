"""A server starting into traffic (issue #16 item 1, SPEC §5.10): clients connect the moment
the port opens and a stream runs through the start. Every message published while the
server was subscribed is received or queued, in order; identifies made while it starts are
held, not refused."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis

from tests.support.accounting import Stream, account
from tests.support.clients import RMClient
from tests.support.processes import ServerProcess, start_redis, wait_until

STARTS = 5
ONLINE = 8  # users whose tab connects as the port opens
OFFLINE = 8  # users who stay away: their messages are queued
RATE = 500  # PUBLISHes a second


def connect_as_soon_as_open(url: str, uid: str, replies: dict[str, object], deadline: float) -> RMClient:
    """A tab that keeps trying until the port opens, then identifies once (ack mode)."""
    while True:
        tab = RMClient(url)
        try:
            tab.connect(timeout=2)
            break
        except Exception:
            tab.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    replies[uid] = tab.identify({"uid": uid, "ack": True}, timeout=15)
    return tab


def inflight_left(r: redis.Redis) -> int:
    return sum(r.zcard(key) for key in r.scan_iter("rm:inflight:*:*"))


@pytest.mark.slow
@pytest.mark.parametrize("start", range(STARTS))
def test_a_server_started_into_traffic_loses_nothing(start: int, tmp_path: Path, logs_dir: Path,
                                                     summary) -> None:
    redis_server = start_redis(tmp_path / "redis")
    r = redis.Redis(port=redis_server.port)
    online = [f"start{start}-on{i}" for i in range(ONLINE)]
    offline = [f"start{start}-off{i}" for i in range(OFFLINE)]
    stream = Stream(r, online + offline)
    stop = threading.Event()
    publisher = threading.Thread(target=stream.publish, args=(10**9, RATE, stop), daemon=True)
    server = ServerProcess(redis_server.port, logs_dir, identify_timeout=20)
    tabs: dict[str, RMClient] = {}
    try:
        publisher.start()
        starter = threading.Thread(target=server.start, daemon=True)
        starter.start()
        replies: dict[str, object] = {}
        deadline = time.monotonic() + 30
        openers = [threading.Thread(target=lambda u=uid: tabs.__setitem__(
            u, connect_as_soon_as_open(server.url, u, replies, deadline)), daemon=True) for uid in online]
        for t in openers:
            t.start()
        for t in openers:
            t.join(40)
        starter.join(30)
        refused = {uid: reply for uid, reply in replies.items()
                   if not (isinstance(reply, dict) and reply.get("ok"))}
        assert len(replies) == ONLINE and not refused, f"identifies refused while starting: {refused}"
        # Traffic goes on a while after everyone is in, then stops.
        time.sleep(1.0)
        stop.set()
        publisher.join(10)
        assert stream.sent > 0
        owed_online = sum(len(stream.owed.get(uid, [])) for uid in online)

        def settled() -> bool:
            got = sum(len(set(tab.payloads())) for tab in tabs.values())
            return got >= owed_online and inflight_left(r) == 0

        wait_until(settled, 20, "every owed message received by the online tabs and settled")
        totals = account(stream, {uid: tab.payloads() for uid, tab in tabs.items()}, r)
        summary(**totals, identifies_refused=len(refused))
        assert totals["lost"] == 0, totals
        assert totals["out_of_order"] == 0, totals
        assert totals["duplicated"] == 0, totals
        assert inflight_left(r) == 0
        log = server.log()
        assert "they are lost" not in log and "Traceback" not in log, log[-3000:]
    finally:
        stop.set()
        for tab in tabs.values():
            tab.close()
        server.stop()
        redis_server.stop()
