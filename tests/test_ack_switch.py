"""Identifying again on the same socket with another ack mode switches it (issue #16 item 5,
SPEC §4), as seen from outside: what an ack-mode socket held unacknowledged goes back to
the queue when it drops; what a plain socket was written counts as delivered."""

from __future__ import annotations

import json
import time

from tests.support.accounting import queued_payloads
from tests.support.processes import wait_until

MESSAGES = [f"m{n}" for n in range(5)]


def publish_all(r, uid):
    for payload in MESSAGES:
        assert r.publish(f"rm.users.{uid}", payload) == 1


def test_plain_then_ack_gives_back_what_was_not_acknowledged(r, server, clients, uid):
    tab = clients(server.url, uid, auto_ack=False)  # the seed's plain form first
    assert tab.identify({"uid": uid, "ack": True}) == {"ok": True, "uid": uid}
    publish_all(r, uid)
    assert [m["payload"] for m in tab.wait_for(len(MESSAGES))] == MESSAGES
    tab.drop()
    wait_until(lambda: queued_payloads(r, uid) == MESSAGES, 15,
               f"the unacknowledged messages back in the queue (have {queued_payloads(r, uid)})")


def test_ack_then_plain_counts_written_messages_as_delivered(r, server, clients, uid):
    tab = clients(server.url, {"uid": uid, "ack": True}, auto_ack=False)
    publish_all(r, uid)
    assert [m["payload"] for m in tab.wait_for(len(MESSAGES))] == MESSAGES
    # Switching to plain: what it was sent counts as written, and so do later messages.
    assert tab.identify(uid) == {"ok": True, "uid": uid}
    later = [f"later{n}" for n in range(3)]
    for payload in later:
        assert r.publish(f"rm.users.{uid}", payload) == 1
    assert [m["payload"] for m in tab.wait_for(len(MESSAGES) + 3)] == MESSAGES + later
    # The server announces every give-back on rm:cluster once it is done, even an empty one.
    events = r.pubsub()
    events.subscribe("rm:cluster")
    tab.drop()
    deadline = time.monotonic() + 15
    while True:
        assert time.monotonic() < deadline, "no give-back announced for the dropped socket"
        message = events.get_message(timeout=1)
        if message and message["type"] == "message":
            event = json.loads(message["data"])
            if event.get("t") == "returned" and uid in event.get("u", []):
                break
    events.close()
    assert queued_payloads(r, uid) == [], "nothing given back: a plain socket's messages are delivered"
