"""Rules 4 and 5 of SPEC §5: draining a queue on identify, and recommitting on drop."""

from __future__ import annotations

import threading
from collections import Counter

import redis

from tests.support.accounting import queued_payloads
from tests.support.processes import wait_until


def publish_all(r: redis.Redis, channel: str, payloads: list[str]) -> None:
    pipe = r.pipeline(transaction=False)
    for payload in payloads:
        pipe.publish(channel, payload)
    pipe.execute()


def account(expected: list[str], received: list[str], still_queued: list[str]) -> dict[str, int]:
    """Count each message: received, still queued, lost, duplicated."""
    seen = Counter(received) + Counter(still_queued)
    return {
        "sent": len(expected),
        "received": len(set(received)),
        "queued": len(still_queued),
        "lost": sum(1 for p in expected if seen[p] == 0),
        "duplicated": sum(n - 1 for n in seen.values() if n > 1),
    }


def test_drain_race_600_in_order_20_rounds(server, clients, r, uid, summary):
    """300 queued, 300 more published while the client identifies: all 600, once, in order."""
    report = []
    for round_ in range(20):
        user = f"{uid}-{round_}"
        channel = f"rm.users.{user}"
        first = [f"q{i}" for i in range(300)]
        later = [f"l{i}" for i in range(300)]
        publish_all(r, channel, first)
        wait_until(lambda u=user: r.llen(f"rm:users:{u}:messages") == 300, 10, "300 queued")
        tab = clients(server.url, ack_limit=None)
        go = threading.Event()

        def publisher(ch=channel, go=go, later=later):
            go.set()
            for i in range(0, 300, 10):  # small pipelines spread over the identify
                publish_all(r, ch, later[i:i + 10])

        thread = threading.Thread(target=publisher)
        thread.start()
        go.wait(5)
        reply = tab.identify({"uid": user, "ack": round_ % 2 == 0})
        assert reply == {"ok": True, "uid": user}
        thread.join(10)
        tab.wait_for(600, timeout=20)
        got = tab.payloads()
        counts = account(first + later, got, queued_payloads(r, user))
        counts["in_order"] = got == first + later
        report.append(counts)
        assert counts["lost"] == 0 and counts["duplicated"] == 0, counts
        assert got == first + later, "out of order"
        tab.close()
    print("drain race:", report[0], "x", len(report))
    summary(rounds=len(report), per_round=report[0]["sent"], received=[c["received"] for c in report],
            lost=sum(c["lost"] for c in report), duplicated=sum(c["duplicated"] for c in report),
            rounds_in_order=sum(c["in_order"] for c in report))


def test_two_tabs_identifying_together_each_get_queue_once(server, clients, r, uid):
    channel = f"rm.users.{uid}"
    expected = [f"m{i}" for i in range(200)]
    publish_all(r, channel, expected)
    wait_until(lambda: r.llen(f"rm:users:{uid}:messages") == 200, 10, "200 queued")
    tabs = [clients(server.url) for _ in range(2)]
    barrier = threading.Barrier(2)

    def identify(tab):
        barrier.wait(5)
        tab.identify({"uid": uid, "ack": True})

    threads = [threading.Thread(target=identify, args=(t,)) for t in tabs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    for tab in tabs:
        tab.wait_for(200)
    for tab in tabs:
        assert tab.payloads() == expected, "each tab gets each queued message once, in order"
    wait_until(lambda: r.llen(f"rm:users:{uid}:messages") == 0, 5, "queue empty")
    inflight = f"rm:inflight:{server_id(server)}:{uid}"
    wait_until(lambda: r.zcard(inflight) == 0, 5, "the last acks to clear in-flight")


def server_id(server) -> str:
    return server.health()[1]["server"]


def stall_after_10_of_1000(server, clients, r, uid, url=None):
    """Queue 1,000, then identify a tab (at `url`: the server's own by default) that
    acknowledges only the first 10."""
    expected = [f"m{i:04d}" for i in range(1000)]
    publish_all(r, f"rm.users.{uid}", expected)
    wait_until(lambda: r.llen(f"rm:users:{uid}:messages") == 1000, 10, "1000 queued")
    stalling = clients(url or server.url, {"uid": uid, "ack": True}, ack_limit=10)
    stalling.wait_for(11)  # it has more than it acknowledged: the drain is mid-batch
    return expected, stalling


def test_ack_client_dropping_after_10_of_1000_loses_nothing(server, clients, r, uid, summary):
    expected, stalling = stall_after_10_of_1000(server, clients, r, uid)
    stalling.drop()
    # What it acknowledged is gone from Redis; the rest went back to the head, in order.
    wait_until(lambda: r.llen(f"rm:users:{uid}:messages") == 990, 10, "990 recommitted")
    assert queued_payloads(r, uid) == expected[10:]
    assert "recommitting" in server.log()
    summary(**comes_back_for_the_990(server, clients, r, uid, expected, stalling, "ack drop"))


def comes_back_for_the_990(server, clients, r, uid, expected, stalling, what):
    """The user identifies again and gets the 990 it had not acknowledged, once, in order."""
    tab = clients(server.url, {"uid": uid, "ack": True})
    tab.wait_for(990)
    counts = account(expected, stalling.payloads()[:10] + tab.payloads(), queued_payloads(r, uid))
    first_ids = {m["payload"]: m["id"] for m in stalling.messages}
    again = [m for m in tab.messages if m["payload"] in first_ids]
    changed = [m["payload"] for m in again if m["id"] != first_ids[m["payload"]]]
    print(f"{what}:", counts, f"{len(again)} sent again (the stalled tab had them unacknowledged), "
          f"{len(changed)} with another id")
    assert counts["lost"] == 0 and counts["duplicated"] == 0
    assert tab.payloads() == expected[10:]
    assert again and not changed, "a re-delivery keeps the message's id"
    return {**counts, "acknowledged_before": 10, "received_after": len(tab.messages),
            "sent_again": len(again), "two_ids": len(changed), "in_order": tab.payloads() == expected[10:]}

