"""Batch acks (SPEC §4, `"ack": "batch"`), against a real server: messages come without a
Socket.IO ack id, the tab acknowledges with `ack` events listing ids, and a message counts
as delivered only once its id arrives from a socket it was sent to. Counted from outside:
what each tab received, what the queue and the in-flight sets in Redis hold."""

from __future__ import annotations

import pytest

from rm_flask import names
from tests.support.accounting import in_flight_count, queued_payloads
from tests.support.processes import wait_until


def publish(r, uid, payloads) -> None:
    pipe = r.pipeline(transaction=False)
    for payload in payloads:
        pipe.publish(f"rm.users.{uid}", payload)
    assert all(n == 1 for n in pipe.execute()), "a server is subscribed"


def test_a_batch_tab_gets_everything_in_order_and_leaves_nothing_in_flight(r, server, clients, uid):
    tab = clients(server.url, {"uid": uid, "ack": "batch"})
    sent = [f"m{n}" for n in range(500)]
    publish(r, uid, sent)
    assert [m["payload"] for m in tab.wait_for(500)] == sent
    wait_until(lambda: in_flight_count(r, uid) == 0, 10, "every message acknowledged in batches")
    assert queued_payloads(r, uid) == []


def test_what_a_batch_tab_did_not_acknowledge_comes_back_once_with_its_id(r, server, clients, uid):
    """It acknowledges 120 of 300, then drops: the rest is given back, in order, and the
    next tab gets exactly that, with the same ids; none of the acknowledged ones again."""
    tab = clients(server.url, {"uid": uid, "ack": "batch"}, ack_limit=120)
    # Published while the identify's drain still runs, they would be queued behind it and
    # drained in batches of 100, each waiting for its acks: the third would never come.
    wait_until(lambda: not r.hexists(names.DRAINING_KEY, uid), 10, "the identify's drain over")
    sent = [f"m{n}" for n in range(300)]
    publish(r, uid, sent)
    first = tab.wait_for(300)
    wait_until(lambda: in_flight_count(r, uid) == 180, 10, "the 120 acknowledged settled")
    tab.drop()
    wait_until(lambda: len(queued_payloads(r, uid)) == 180, 15, "the rest given back")
    assert queued_payloads(r, uid) == sent[120:]
    again = clients(server.url, {"uid": uid, "ack": "batch"})
    back = again.wait_for(180)
    assert [m["payload"] for m in back] == sent[120:]
    assert [m["id"] for m in back] == [m["id"] for m in first[120:]], "the same ids"
    wait_until(lambda: in_flight_count(r, uid) == 0 and not queued_payloads(r, uid), 10, "all delivered")


@pytest.mark.parametrize("bad", [None, "x", 7, {"ids": []}, [None, 3, ["a"], {"b": 1}], ["nope"] * 2000])
def test_ack_events_of_any_shape_harm_nothing(r, server, clients, uid, bad):
    tab = clients(server.url, {"uid": uid, "ack": "batch"}, auto_ack=False)
    publish(r, uid, ["a", "b"])
    got = tab.wait_for(2)
    tab.sio.emit("ack", bad, namespace=tab.namespace)
    tab.sio.emit("ack", [got[1]["id"]], namespace=tab.namespace)  # then a good one
    wait_until(lambda: in_flight_count(r, uid) == 1, 10, "the good ack settled its one message")
    assert tab.sio.connected and "Traceback" not in server.log()


def test_a_tab_cannot_acknowledge_what_only_another_tab_was_sent(r, server, clients, uid):
    holder = clients(server.url, {"uid": uid, "ack": "batch"}, auto_ack=False)
    publish(r, uid, ["only for the holder"])
    msg_id = holder.wait_for(1)[0]["id"]
    other = clients(server.url, {"uid": uid, "ack": "batch"}, auto_ack=False)
    # The newcomer is brought up to date (SPEC §5.4), so it holds the message too: an
    # ack from it counts. An id it was never sent does not.
    assert [m["id"] for m in other.wait_for(1)] == [msg_id]
    other.sio.emit("ack", [msg_id.replace(".", ":")], namespace=other.namespace)
    publish(r, uid, ["ping"])
    other.wait_for(2)
    assert in_flight_count(r, uid) == 2, "an unknown id settled nothing"
    other.sio.emit("ack", [msg_id], namespace=other.namespace)
    wait_until(lambda: in_flight_count(r, uid) == 1, 10, "the id it holds settled")


def test_switching_between_batch_and_per_message_acks_keeps_every_message(r, server, clients, uid):
    tab = clients(server.url, {"uid": uid, "ack": "batch"})
    publish(r, uid, [f"b{n}" for n in range(50)])
    tab.wait_for(50)
    assert tab.identify({"uid": uid, "ack": True}) == {"ok": True, "uid": uid}
    publish(r, uid, [f"e{n}" for n in range(50)])
    got = tab.wait_for(100)
    assert [m["payload"] for m in got] == [f"b{n}" for n in range(50)] + [f"e{n}" for n in range(50)]
    wait_until(lambda: in_flight_count(r, uid) == 0, 10, "both kinds acknowledged")
