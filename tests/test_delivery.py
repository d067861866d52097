"""Rules 1, 2 and 6 of SPEC §5 against a real server: live delivery, queueing, order."""

from __future__ import annotations

import json

from tests.support.processes import wait_until


def test_live_message_reaches_every_open_socket(server, clients, r, uid):
    tabs = [clients(server.url, uid) for _ in range(2)]
    r.publish(f"rm.users.{uid}", "Hello, world!")
    for tab in tabs:
        (message,) = tab.wait_for(1)
        assert message["payload"] == "Hello, world!"
        assert message["source"] == f"rm.users.{uid}"
        assert isinstance(message["timestamp"], int) and isinstance(message["id"], str)
    assert tabs[0].messages[0]["id"] == tabs[1].messages[0]["id"]
    assert [t.messages[0]["bubble"] for t in tabs] == [True, False]


def test_offline_message_is_queued_with_ttl(server, r, uid):
    assert r.publish(f"rm.users.{uid}", "Hello, world!") == 1
    key = f"rm:users:{uid}:messages"
    wait_until(lambda: r.llen(key) == 1, 5, "the message to be queued")
    stored = json.loads(r.lindex(key, 0))
    assert stored["payload"] == "Hello, world!" and stored["source"] == f"rm.users.{uid}"
    assert 0 < r.ttl(key) <= 604800


def test_queue_is_delivered_in_order_on_identify(server, clients, r, uid):
    for i in range(50):
        r.publish(f"rm.users.{uid}", f"m{i}")
    wait_until(lambda: r.llen(f"rm:users:{uid}:messages") == 50, 5, "50 queued")
    tab = clients(server.url, uid)
    tab.wait_for(50)
    assert tab.payloads() == [f"m{i}" for i in range(50)]
    wait_until(lambda: r.llen(f"rm:users:{uid}:messages") == 0, 5, "the queue to empty")
    r.publish(f"rm.users.{uid}", "live")
    tab.wait_for(51)
    assert tab.payloads()[-1] == "live"
    assert "purging!" in server.log()
