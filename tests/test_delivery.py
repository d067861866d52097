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


def test_bubble_follows_the_oldest_open_socket(server, clients, r, uid):
    tabs = [clients(server.url, uid) for _ in range(3)]
    channel = f"rm.users.{uid}"
    r.publish(channel, "one")
    for tab in tabs:
        tab.wait_for(1)
    assert [t.messages[-1]["bubble"] for t in tabs] == [True, False, False]
    tabs[0].close()
    wait_until(lambda: server.health()[1]["connections"] == 2, 5, "the first tab to be gone")
    r.publish(channel, "two")
    for tab in tabs[1:]:
        tab.wait_for(2)
    assert [t.messages[-1]["bubble"] for t in tabs[1:]] == [True, False]
    late = clients(server.url, uid)
    tabs[1].close()
    wait_until(lambda: server.health()[1]["connections"] == 2, 5, "the second tab to be gone")
    r.publish(channel, "three")
    tabs[2].wait_for(3)
    late.wait_for(1)
    assert (tabs[2].messages[-1]["bubble"], late.messages[-1]["bubble"]) == (True, False)


def test_group_message_reaches_online_and_offline_members(server, clients, r, uid):
    online, offline, cats = f"{uid}-on", f"{uid}-off", f"{uid}-cats"
    r.sadd(f"rm:channels:{cats}:subscribers", online, offline)
    tab = clients(server.url, online)
    r.publish(f"rm.channels.{cats}", "Meow!")
    r.publish(f"rm.groups.{cats}", "Purr")  # the seed's alias
    tab.wait_for(2)
    assert tab.payloads() == ["Meow!", "Purr"]
    assert [m["source"] for m in tab.messages] == [f"rm.channels.{cats}", f"rm.groups.{cats}"]
    wait_until(lambda: r.llen(f"rm:users:{offline}:messages") == 2, 5, "the offline member's queue")
    later = clients(server.url, offline)
    later.wait_for(2)
    assert later.payloads() == ["Meow!", "Purr"]
    assert later.messages[0]["id"] == tab.messages[0]["id"], "one id per published message"


def test_percent_payloads_arrive_byte_exact_to_tabs_and_groups(server, clients, r, uid):
    tabs = [clients(server.url, uid) for _ in range(2)]
    r.sadd(f"rm:channels:{uid}-g:subscribers", uid)
    payloads = ["100%", "%41%42", "%", "50% off %s %d {0}"]
    for p in payloads:
        r.publish(f"rm.users.{uid}", p)
    for p in payloads:
        r.publish(f"rm.channels.{uid}-g", p)
    for tab in tabs:
        tab.wait_for(8)
        assert tab.payloads() == payloads + payloads


def test_non_utf8_payload_is_delivered_as_base64(server, clients, r, uid):
    import base64

    tab = clients(server.url, uid)
    raw = b"\xff\xfe\x00binary\x80"
    r.publish(f"rm.users.{uid}", raw)
    r.publish(f"rm.users.{uid}", "after")
    tab.wait_for(2)
    first, second = tab.messages
    assert first["encoding"] == "base64" and base64.b64decode(first["payload"]) == raw
    assert second["payload"] == "after" and "encoding" not in second


def test_unknown_channels_and_invalid_ids_are_ignored(server, clients, r, uid):
    tab = clients(server.url, uid)
    for channel in ["rm.other.x", "rm.users.", "rm.users.a:b", "rm.users.a b", "rm.channels."]:
        r.publish(channel, "nope")
    r.publish(f"rm.users.{uid}", "yes")
    tab.wait_for(1)
    assert tab.payloads() == ["yes"]
    assert not r.keys("rm:users:a*"), "nothing queued for invalid ids"
    assert "Ignoring message on rm.other.x" in server.log()


def test_seed_log_lines(server, clients, r, uid):
    r.publish(f"rm.users.{uid}", "Hello, world!")
    wait_until(lambda: r.llen(f"rm:users:{uid}:messages") == 1, 5, "queued")
    tab = clients(server.url, f"{uid}:")
    tab.wait_for(1)
    log = server.log()
    for line in [
        f"New message from channel rm.users.{uid}",
        f"Client is not online, queueing message in Redis (rm:users:{uid}:messages)",
        "Waiting for ID...",
        f"Assigning id {uid} to socket 127.0.0.1:",
        f"You're subscribed to rm.users.{uid}!",
        f"rm.users.{uid} has 1 messages enqueued, purging!",
        f"{uid}: Purging message 'Hello, world!' from rm.users.{uid}",
    ]:
        assert line in log, line


def test_reidentify_on_same_socket_takes_no_second_slot(server, clients, r, uid):
    tab = clients(server.url, uid)
    assert tab.identify(uid) == {"ok": True, "uid": uid}
    assert tab.identify({"uid": uid, "ack": True}) == {"ok": True, "uid": uid}
    r.publish(f"rm.users.{uid}", "once")
    tab.wait_for(1)
    r.publish(f"rm.users.{uid}", "marker")
    tab.wait_for(2)
    assert tab.payloads() == ["once", "marker"], "no double delivery"
    other = f"{uid}-b"
    assert tab.identify(other) == {"ok": True, "uid": other}
    r.publish(f"rm.users.{other}", "for b")
    tab.wait_for(3)
    r.publish(f"rm.users.{uid}", "queued for a")
    wait_until(lambda: r.llen(f"rm:users:{uid}:messages") == 1, 5, "a is offline now")
    assert tab.payloads()[-1] == "for b"


def test_burst_of_large_payloads_keeps_the_subscription(server, clients, r, uid):
    """A burst leaves half a reply in the socket; reading on must not drop the connection."""
    tab = clients(server.url, uid)
    payloads = [f"{i}:" + "x" * 100_000 for i in range(40)]
    pipe = r.pipeline(transaction=False)
    for p in payloads:
        pipe.publish(f"rm.users.{uid}", p)
    pipe.execute()
    tab.wait_for(40)
    assert tab.payloads() == payloads
    assert "Lost the Redis subscription" not in server.log()


def test_each_append_refreshes_the_queues_ttl(server, r, uid):
    """SPEC §5 rule 2: the TTL is set on every append, so a queue lives `queue_expiry`
    after its last append, not after its first."""
    key = f"rm:users:{uid}:messages"
    assert r.publish(f"rm.users.{uid}", "first") == 1
    wait_until(lambda: r.llen(key) == 1, 5, "the first message queued")
    r.expire(key, 30)  # as if most of its week had gone by
    assert r.publish(f"rm.users.{uid}", "second") == 1
    wait_until(lambda: r.llen(key) == 2, 5, "the second message queued")
    ttl = r.ttl(key)
    assert 604800 - 60 < ttl <= 604800, f"TTL {ttl}s after an append: not refreshed to queue_expiry"


def test_an_ack_mode_message_is_in_flight_in_redis_before_the_tab_gets_it(server, clients, r, uid):
    """README: in ack mode a live message is recorded in flight before it is written. Each
    time a message arrives, before the tab acknowledges it, Redis already holds it in the
    server's in-flight set for that user; once acknowledged it leaves."""
    server_id = server.health()[1]["server"]
    inflight = f"rm:inflight:{server_id}:{uid}"
    seen_in_flight: list[bool] = []
    tab = clients(server.url, {"uid": uid, "ack": True})
    tab.on_arrival = lambda envelope: seen_in_flight.append(
        any(json.loads(raw)["id"] == envelope["id"] for raw in r.zrange(inflight, 0, -1)))
    for i in range(50):
        r.publish(f"rm.users.{uid}", f"m{i}")
    tab.wait_for(50)
    print(f"in flight before written: {sum(seen_in_flight)} of {len(seen_in_flight)}")
    assert seen_in_flight == [True] * 50
    wait_until(lambda: r.zcard(inflight) == 0, 5, "every acknowledged message to leave in-flight")


def test_identifying_again_with_ack_true_switches_the_socket_to_ack_mode(server, clients, r, uid):
    """SPEC §4: a second identify with another `ack` mode switches the socket to it. In
    ack mode a message the tab has not acknowledged goes back to the queue when it drops."""
    tab = clients(server.url, uid, auto_ack=False)
    assert tab.identify({"uid": uid, "ack": True}) == {"ok": True, "uid": uid}
    payloads = [f"held {i}" for i in range(5)]
    for p in payloads:
        r.publish(f"rm.users.{uid}", p)
    tab.wait_for(5)
    tab.drop()
    key = f"rm:users:{uid}:messages"
    try:
        wait_until(lambda: r.llen(key) == 5, 5, "the 5 unacknowledged messages back in the queue")
    finally:
        print(f"re-identified with ack: true, 5 held unacknowledged, dropped: {r.llen(key)} given back")
    assert [json.loads(m)["payload"] for m in r.lrange(key, 0, -1)] == payloads
