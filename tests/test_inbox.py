"""The inbox (SPEC §9) against a real redis-server and real server processes: entries wait
while no server runs, reach users and queues once each in the stream's order, survive a
`kill -9` of the reader, are one message per `key`, and bad entries harm nothing else."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
import redis

import rm_flask
from rm_flask import names
from rm_flask.inbox import Inbox, InvalidChannel, RoutedHere, envelope_id
from rm_flask.metrics import Metrics
from tests.support.accounting import in_flight_count
from tests.support.clients import RMClient, ack, connected
from tests.support.processes import ROOT, wait_until

GROUP_MEMBERS = 5


@pytest.fixture
def inbox_r(r: redis.Redis) -> redis.Redis:
    """The session's Redis with no inbox left by another test (no server runs on it)."""
    r.delete(names.INBOX_KEY, names.INBOX_READER_KEY)
    for key in r.scan_iter(names.inbox_dedupe_key("*")):
        r.delete(key)
    return r


def one_id_each(tabs: list[RMClient]) -> bool:
    ids: dict[str, set[str]] = {}
    for tab in tabs:
        for m in tab.messages:
            ids.setdefault(m["payload"], set()).add(m["id"])
    return all(len(v) == 1 for v in ids.values())


def settled(r: redis.Redis, uids: list[str]) -> bool:
    """Every inbox entry routed, nothing queued or in flight for `uids`."""
    pending = r.xpending(names.INBOX_KEY, names.INBOX_GROUP)["pending"] if r.exists(names.INBOX_KEY) else 0
    return pending == 0 and not any(r.llen(names.queue_key(u)) or in_flight_count(r, u) for u in uids)


### The publisher ###


def test_publish_refuses_a_channel_the_server_would_not_deliver(inbox_r):
    for channel in ("rm.users.a:b", "rm.nothing.x", "users.a", "rm.users."):
        with pytest.raises(InvalidChannel, match="is invalid: expected rm.users.UID"):
            rm_flask.publish(inbox_r, channel, "x")
    with pytest.raises(ValueError, match="key"):
        rm_flask.publish(inbox_r, "rm.users.a", "x", key="")
    assert not inbox_r.exists(names.INBOX_KEY), "nothing added"


def test_publish_returns_the_id_the_envelope_will_carry(inbox_r):
    msg_id = rm_flask.publish(inbox_r, "rm.users.a", b"\xff bytes", key="k")
    [(entry_id, fields)] = inbox_r.xrange(names.INBOX_KEY)
    assert msg_id == envelope_id(entry_id.decode()) and "." not in msg_id
    assert fields == {b"channel": b"rm.users.a", b"data": b"\xff bytes", b"key": b"k"}


### One reader, against Redis alone ###


def test_the_reader_forwards_in_order_drops_repeats_and_bad_entries_and_trims(inbox_r):
    r = inbox_r
    metrics = Metrics()
    reader = Inbox(r, "me", metrics, key_ttl=100, max_payload=10)
    heard = r.pubsub()
    heard.subscribe(names.INBOX_CHANNEL)
    heard.get_message(timeout=1)
    ids = [rm_flask.publish(r, "rm.users.a", f"m{n}", key="same" if n in (1, 2) else None) for n in range(4)]
    r.xadd(names.INBOX_KEY, {"channel": "rm.users.a"})  # no data
    r.xadd(names.INBOX_KEY, {"channel": "rm.nowhere", "data": "x"})
    r.xadd(names.INBOX_KEY, {"channel": "rm.users.a", "data": "x" * 11})
    assert reader.stats() is None, "nothing to show before a look"
    assert reader.look()["unhandled"] == 7
    assert metrics.registry.get_sample_value("rm_inbox_unhandled") == 7, "/metrics shows the look"
    assert reader._lease()
    reader._pass()
    frames = []
    while (message := heard.get_message(timeout=1)) is not None:
        frames.append(message["data"])
    assert [f.split(b"\n", 2)[2] for f in frames] == [b"m0", b"m1", b"m3"], "in order; m2 repeats m1's key"
    assert [envelope_id(f.split(b"\n")[0].decode()) for f in frames] == [ids[0], ids[1], ids[3]]
    assert metrics.registry.get_sample_value("rm_inbox_repeats_total") == 1
    for reason in ("fields", "channel", "too_large"):
        assert metrics.registry.get_sample_value("rm_inbox_invalid_total", {"reason": reason}) == 1
    # Forwarded, not yet routed: still unhandled, and nothing is trimmed.
    assert reader.look()["unhandled"] == 3
    reader.trim()
    assert r.xlen(names.INBOX_KEY) == 7
    reader.routed("me", [f.split(b"\n")[0].decode() for f in frames], ["me"])
    assert reader.look() == {"unhandled": 0, "oldest_s": 0.0, "read_here": True}
    reader.trim()
    assert r.xlen(names.INBOX_KEY) == 1, "handled entries go; the last keeps the stream's last id"


def test_a_trim_while_entries_are_added_and_handled_keeps_every_one_not_yet_read(inbox_r):
    """A trim decides what to drop from what it read a moment before. Entries added in
    between, once all before them were handled, are unread and must stay."""
    r = inbox_r
    trimmer = Inbox(r, "trimmer", Metrics())
    r.xgroup_create(names.INBOX_KEY, names.INBOX_GROUP, id="0", mkstream=True)
    done = threading.Event()
    added: list[bytes] = []
    handled: set[bytes] = set()

    def add() -> None:
        for n in range(2000):
            added.append(r.xadd(names.INBOX_KEY, {"channel": "rm.users.a", "data": f"m{n}"}))
            if n % 10 == 0:
                time.sleep(0.001)  # let the handler catch up now and then, as a real one does
        done.set()

    def handle() -> None:  # reads and acknowledges at once, so the group is often caught up
        reader = r.client()
        while not (done.is_set() and len(handled) == len(added)):
            for _, entries in reader.xreadgroup(names.INBOX_GROUP, "h", {names.INBOX_KEY: ">"},
                                                count=100, block=10) or []:
                reader.xack(names.INBOX_KEY, names.INBOX_GROUP, *[e for e, _ in entries])
                handled.update(e for e, _ in entries)

    threads = [threading.Thread(target=add), threading.Thread(target=handle, daemon=True)]
    for t in threads:
        t.start()
    trims = 0
    while not done.is_set():
        trimmer.trim()
        trims += 1
    threads[1].join(10)
    lost = [e for e in added if e not in handled]
    assert trims > 10, "trims ran while entries were added"
    assert not lost, f"{len(lost)} of {len(added)} entries trimmed before they were read, in {trims} trims"


def test_an_entry_is_acknowledged_only_once_every_server_in_the_view_routed_its_part(inbox_r):
    """SPEC §9: an entry leaves the pending list only once its message is queued or written
    everywhere it must be. Servers note their part; the last of the view acknowledges."""
    r = inbox_r
    inbox = Inbox(r, "a", Metrics())
    r.xgroup_create(names.INBOX_KEY, names.INBOX_GROUP, id="0", mkstream=True)
    entry = rm_flask.publish(r, "rm.users.a", "x")[2:]
    for _, entries in r.xreadgroup(names.INBOX_GROUP, "a", {names.INBOX_KEY: ">"}) or []:
        assert [e.decode() for e, _ in entries] == [entry]

    def pending() -> int:
        return r.xpending(names.INBOX_KEY, names.INBOX_GROUP)["pending"]

    view = ["a", "b", "c"]
    inbox.routed("b", [entry], view)
    inbox.routed("a", [entry], view)
    assert pending() == 1, "c has not routed its part"
    assert r.smembers(names.inbox_routed_key(entry)) == {b"a", b"b"}
    assert 0 < r.pttl(names.inbox_routed_key(entry)) <= 60_000, "a record nobody finishes lapses"
    inbox.routed("a", [entry], view)
    assert pending() == 1, "a second note of a's changes nothing"
    inbox.routed("c", [entry], ())  # c's part is the others' to redo: noted, and c decides nothing
    assert pending() == 1
    inbox.routed("b", [entry], ["a", "b"])  # read again after c was declared dead
    assert pending() == 0
    assert not r.exists(names.inbox_routed_key(entry)), "its record goes with it"
    alone = rm_flask.publish(r, "rm.users.a", "y")[2:]
    r.xreadgroup(names.INBOX_GROUP, "a", {names.INBOX_KEY: ">"})
    inbox.routed("a", [alone], ["a"])
    assert pending() == 0, "a lone server acknowledges at once"
    assert not r.exists(names.inbox_routed_key(alone))
    redone = rm_flask.publish(r, "rm.users.a", "z")[2:]
    r.xreadgroup(names.INBOX_GROUP, "a", {names.INBOX_KEY: ">"})
    inbox.routed("a", [redone], view)
    inbox.routed("b", [redone], view)
    inbox.routed("c", [redone], view)  # noted for c, who died, by the process that redid its part
    assert pending() == 0


def test_a_server_remembers_the_entries_it_routed_until_its_subscription_is_lost(monkeypatch):
    """What `RoutedHere` holds decides whether an entry forwarded again is routed here
    again: for `ROUTED_TTL` after the last time, and not after a rejoin (`forget`)."""
    clock = [100.0]
    monkeypatch.setattr("rm_flask.inbox.time.monotonic", lambda: clock[0])
    routed = RoutedHere(horizon=60)
    routed.add(["1-0", "2-0"])
    clock[0] = 130.0
    routed.add(["3-0", "1-0"])  # the first forwarded again: remembered from now
    clock[0] = 170.0
    routed.add([])
    assert "2-0" not in routed and "1-0" in routed and "3-0" in routed
    routed.forget()
    assert "1-0" not in routed and "3-0" not in routed


def test_alone_what_was_forwarded_before_the_subscription_came_back_goes_again_first(inbox_r):
    """The only server's subscription was cut just after Redis answered for m0 and m1:
    they may never have been sent. Once it is back, they are forwarded again, in order,
    before m2; with other servers subscribed (they heard them, and redo our part), not."""
    r = inbox_r
    reader = Inbox(r, "me", Metrics())
    heard = r.pubsub()
    heard.subscribe(names.INBOX_CHANNEL)
    heard.get_message(timeout=1)
    assert reader._lease()
    for n in range(2):
        rm_flask.publish(r, "rm.users.a", f"m{n}")
    reader._pass()
    reader.resubscribed(alone=False)
    rm_flask.publish(r, "rm.users.a", "m2")
    reader._pass()
    reader.resubscribed(alone=True)
    rm_flask.publish(r, "rm.users.a", "m3")
    reader._pass()
    frames = []
    while (message := heard.get_message(timeout=1)) is not None:
        frames.append(message["data"].split(b"\n", 2)[2])
    assert frames == [b"m0", b"m1", b"m2", b"m0", b"m1", b"m2", b"m3"]


def test_a_reader_that_lost_its_lease_forwards_nothing(inbox_r):
    r = inbox_r
    first, second = Inbox(r, "one", Metrics()), Inbox(r, "two", Metrics())
    assert first._lease() and not second._lease()
    r.delete(names.INBOX_READER_KEY)  # its lease lapsed while it was paused
    assert second._lease()
    rm_flask.publish(r, "rm.users.a", "x")
    first._pass()  # woke up: reads the entry, but cannot forward it
    assert not first.reading
    assert r.xpending(names.INBOX_KEY, names.INBOX_GROUP)["pending"] == 1, "left for a redo by the reader"


### Real servers ###


def test_1000_entries_added_while_no_server_runs_reach_3_servers_users_once_in_order(
        inbox_r, make_server, uid, summary):
    """SPEC §9: added while nothing runs; then 3 processes start, the users connect:
    every message delivered once (or still queued), in the stream's order."""
    r = inbox_r
    uids = [f"{uid}-{n}" for n in range(10)]
    members = uids[:GROUP_MEMBERS]
    r.sadd(names.group_members_key(f"{uid}-g"), *members)
    owed: dict[str, list[str]] = {u: [] for u in uids}
    for n in range(1000):
        if n % 10 == 9:
            payload = f"{n}:group"
            rm_flask.publish(r, names.group_channel(f"{uid}-g"), payload)
            for u in members:
                owed[u].append(payload)
        else:
            u = uids[n % 10]
            payload = f"{n}:{u}"
            rm_flask.publish(r, names.user_channel(u), payload)
            owed[u].append(payload)
    servers = [make_server() for _ in range(3)]
    queued = sum(map(len, owed.values()))  # the 100 group messages once per member
    wait_until(lambda: settled(r, []) and sum(r.llen(names.queue_key(u)) for u in uids) == queued,
               30, lambda: f"every entry routed and queued ({[r.llen(names.queue_key(u)) for u in uids]})")
    tabs = [connected(servers[n % 3].url, ack(u)) for n, u in enumerate(uids)]
    try:
        for tab, u in zip(tabs, uids, strict=True):
            wait_until(lambda tab=tab, u=u: len(set(tab.payloads())) >= len(owed[u]), 30,
                       lambda tab=tab, u=u: f"{u}'s {len(owed[u])} (has {len(set(tab.payloads()))})")
        wait_until(lambda: settled(r, uids), 10, "nothing queued or in flight")
        duplicated = sum(len(t.payloads()) - len(set(t.payloads())) for t in tabs)
        summary(entries=1000, owed=sum(map(len, owed.values())),
                received=sum(len(set(t.payloads())) for t in tabs), duplicated=duplicated)
        for tab, u in zip(tabs, uids, strict=True):
            assert tab.first_payloads() == owed[u], f"{u}: each once, in the stream's order"
        assert duplicated == 0
        assert one_id_each(tabs)
        # /healthz shows housekeeping's last look, at most a second old.
        wait_until(lambda: all(s.health()[1].get("inbox", {}).get("unhandled") == 0 for s in servers), 5,
                   lambda: f"no backlog shown: {[s.health()[1].get('inbox') for s in servers]}")
        assert sum(s.health()[1]["inbox"]["read_here"] for s in servers) == 1, "one reader"
    finally:
        for tab in tabs:
            tab.close()


def publish_steadily(r: redis.Redis, uids: list[str], count: int, rate: float) -> list[str]:
    """`count` inbox entries at `rate` a second, round the users; returns the payloads."""
    payloads = []
    started = time.monotonic()
    for n in range(count):
        u = uids[n % len(uids)]
        payloads.append(f"{n}:{u}")
        rm_flask.publish(r, names.user_channel(u), payloads[-1])
        ahead = started + (n + 1) / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    return payloads


def entries_arrived(r: redis.Redis, tabs: list[RMClient], uids: list[str], sent: list[str],
                    summary, within: float) -> Counter[str]:
    """Wait until every entry `sent` has reached a tab and nothing is left unhandled,
    queued or in flight; report the counts, and assert each entry received, one id
    each, each user's in the stream's order. Returns the copies received of each."""
    def received() -> set[str]:
        return {p for t in tabs for p in t.payloads()}

    wait_until(lambda: received() >= set(sent), within,
               lambda: f"every entry ({len(set(sent) - received())} missing)")
    wait_until(lambda: settled(r, uids), 30, "every entry acknowledged, nothing queued or in flight")
    got = Counter(p for t in tabs for p in t.payloads())
    late = sum(t.first_payloads() != sorted(t.first_payloads(), key=lambda p: int(p.split(":")[0]))
               for t in tabs)
    summary(sent=len(sent), received=len(got), lost=len(set(sent) - set(got)),
            duplicated=sum(got.values()) - len(got), tabs_out_of_order=late)
    assert set(got) == set(sent)
    assert one_id_each(tabs), "a redo keeps the entry's id"
    assert late == 0, "each user's entries in the stream's order"
    return got


@pytest.mark.slow
def test_kill_9_of_the_reader_of_3_loses_no_entry(inbox_r, make_server, uid, summary):
    """The reader dies mid-stream (2,000 entries/s to 20 ack-mode users on the others):
    the next takes the lease, forwards what it left unacknowledged again, and goes on.
    0 lost; a message that comes twice has one id."""
    r = inbox_r
    servers = [make_server(log_level="warning") for _ in range(3)]
    wait_until(lambda: any(s.health()[1].get("inbox", {}).get("read_here") for s in servers), 10, "a reader")
    reader = next(s for s in servers if s.health()[1]["inbox"]["read_here"])
    others = [s for s in servers if s is not reader]
    uids = [f"{uid}-{n}" for n in range(20)]
    tabs = [connected(others[n % 2].url, ack(u)) for n, u in enumerate(uids)]
    sent: list[str] = []
    publisher = threading.Thread(target=lambda: sent.extend(publish_steadily(r, uids, 6000, 2000)))
    try:
        publisher.start()
        wait_until(lambda: sum(len(t.payloads()) for t in tabs) >= 1500, 10, "a stream flowing to the tabs")
        reader.kill()
        publisher.join(30)
        entries_arrived(r, tabs, uids, sent, summary, within=40)
        assert len(sent) == 6000
    finally:
        for tab in tabs:
            tab.close()


@pytest.mark.slow
def test_entries_a_paused_server_had_not_routed_survive_all_servers_dying(inbox_r, make_server, uid, summary):
    """SPEC §9: an entry stays pending until every server that has a part in it has routed
    it. The user's tab is on a paused server; the other one reads 50 entries and routes
    them (its part is nothing), then both are killed with `kill -9`. A server started after
    finishes the 50: the user gets each. (Acknowledged by the first server to route it,
    as before, all 50 were lost.)"""
    r = inbox_r
    reader = make_server(log_level="warning")
    wait_until(lambda: reader.health()[1].get("inbox", {}).get("read_here"), 10, "the first server to read")
    paused = make_server(log_level="warning")
    tab = connected(paused.url, ack(uid))
    routed_before = reader.metric("rm_messages_received_total")
    os.kill(paused.process.pid, signal.SIGSTOP)
    try:
        sent = [f"{n}:{uid}" for n in range(50)]
        for payload in sent:
            rm_flask.publish(r, names.user_channel(uid), payload)
        wait_until(lambda: reader.metric("rm_messages_received_total") >= routed_before + 50, 10,
                   "the reader to read the 50")
        pending_while_paused = r.xpending(names.INBOX_KEY, names.INBOX_GROUP)["pending"]
    finally:
        reader.kill()
        paused.kill()
    tab.close()
    reader.restart()
    tab = connected(reader.url, ack(uid))
    try:
        wait_until(lambda: set(tab.payloads()) >= set(sent), 60,
                   lambda: f"every entry ({len(set(sent) - set(tab.payloads()))} missing)")
        wait_until(lambda: settled(r, [uid]), 30, "nothing unhandled, queued or in flight")
        got = Counter(tab.payloads())
        summary(pending_while_paused=pending_while_paused, received=len(got),
                duplicated=sum(got.values()) - len(got))
        assert pending_while_paused == 50, "routed by one server, not by the one with the user's tab"
        assert one_id_each([tab])
        assert tab.first_payloads() == sent, "in the stream's order"
    finally:
        tab.close()


@pytest.mark.slow
def test_a_server_started_into_inbox_traffic_loses_no_entry(inbox_r, make_server, uid, summary):
    """A third server joins while 1,000 entries/s flow to users on the first two: each
    entry reaches its user, in the stream's order, with one id; every entry ends
    acknowledged, and none is sent twice: entries forwarded in the moment before the
    newcomer's subscription took effect are noted for it by the others' redo of its window
    (without that, they waited and were forwarded again: 3-14 duplicates in 3 of 6 runs)."""
    r = inbox_r
    servers = [make_server(log_level="warning") for _ in range(2)]
    uids = [f"{uid}-{n}" for n in range(20)]
    tabs = [connected(servers[n % 2].url, ack(u)) for n, u in enumerate(uids)]
    sent: list[str] = []
    publisher = threading.Thread(target=lambda: sent.extend(publish_steadily(r, uids, 5000, 1000)))
    try:
        publisher.start()
        wait_until(lambda: sum(len(t.payloads()) for t in tabs) >= 1200, 10, "a stream flowing to the tabs")
        servers.append(make_server(log_level="warning"))
        publisher.join(30)
        got = entries_arrived(r, tabs, uids, sent, summary, within=30)
        assert len(sent) == 5000
        assert sum(got.values()) == len(got), "nothing sent twice"
    finally:
        for tab in tabs:
            tab.close()


@pytest.mark.slow
def test_kill_9_of_a_lone_server_then_a_restart_finishes_its_entries(inbox_r, make_server, uid, summary):
    r = inbox_r
    server = make_server(log_level="warning")
    tab = connected(server.url, ack(uid))
    sent: list[str] = []
    publisher = threading.Thread(target=lambda: sent.extend(publish_steadily(r, [uid], 3000, 2000)))
    publisher.start()
    time.sleep(0.5)
    server.kill()
    publisher.join(30)
    tab.close()
    before = set(tab.payloads())
    server.restart()
    tab = connected(server.url, ack(uid))
    try:
        wait_until(lambda: set(tab.payloads()) | before >= set(sent), 40,
                   lambda: f"every entry ({len(set(sent) - set(tab.payloads()))} missing)")
        wait_until(lambda: settled(r, [uid]), 20, "nothing unhandled, queued or in flight")
        summary(sent=len(sent), received_after_restart=len(set(tab.payloads())))
        assert one_id_each([tab])
    finally:
        tab.close()


@pytest.mark.slow
def test_flushall_under_inbox_traffic_loses_nothing_added_after_it(inbox_r, make_server, uid, summary):
    """Redis loses its data (the stream, the group, the lease) while entries flow: the
    reader makes the group again and goes on. What was added after the FLUSHALL all
    arrives, in order; what the flush deleted before a server read it is not promised."""
    r = inbox_r
    server = make_server(log_level="warning")
    tab = connected(server.url, ack(uid))
    sent: list[str] = []
    publisher = threading.Thread(target=lambda: sent.extend(publish_steadily(r, [uid], 2000, 1000)))
    try:
        publisher.start()
        wait_until(lambda: len(tab.payloads()) >= 500, 10, "the first 500")
        flushed_at = len(tab.payloads())
        r.flushall()
        wait_until(lambda: r.xrange(names.INBOX_KEY, count=1), 5, "an entry added after the flush")
        first_after = int(r.xrange(names.INBOX_KEY, count=1)[0][1][b"data"].split(b":")[0])
        publisher.join(30)
        after = sent[first_after:]

        def missing() -> int:
            return len(set(after) - set(tab.payloads()))

        wait_until(lambda: not missing(), 30, lambda: f"all added after the flush ({missing()} missing)")
        got = tab.first_payloads()
        summary(sent=len(sent), received_before_flush=flushed_at, added_after_flush=len(after),
                received=len(got), lost_to_the_flush=len(set(sent) - set(got)))
        assert len(after) > 500, "the flush came mid-stream"
        assert got == sorted(got, key=lambda p: int(p.split(":")[0])), "in the stream's order"
        assert "Traceback" not in server.log()
    finally:
        tab.close()


@pytest.fixture
def tabs_on_two(make_server, uid):
    """Two servers, and a tab of `uid` on each."""
    tabs = [connected(make_server().url, ack(uid)) for _ in range(2)]
    yield tabs
    for tab in tabs:
        tab.close()


def test_the_same_key_twice_across_processes_is_one_message(inbox_r, tabs_on_two, uid):
    rm_flask.publish(inbox_r, names.user_channel(uid), "once", key="order-17")
    rm_flask.publish(inbox_r, names.user_channel(uid), "once again", key="order-17")
    rm_flask.publish(inbox_r, names.user_channel(uid), "after")
    for tab in tabs_on_two:
        wait_until(lambda tab=tab: "after" in tab.payloads(), 10, "the message after")
        assert tab.payloads() == ["once", "after"]


def test_bad_entries_are_acknowledged_logged_and_counted_and_harm_nothing(inbox_r, make_server, uid):
    r = inbox_r
    server = make_server(max_payload=1000)
    tab = connected(server.url, ack(uid))
    try:
        r.xadd(names.INBOX_KEY, {"data": "no channel"})
        r.xadd(names.INBOX_KEY, {"channel": "rm.users.bad:id", "data": "x"})
        r.xadd(names.INBOX_KEY, {"channel": names.user_channel(uid), "data": "x" * 1001})
        r.xadd(names.INBOX_KEY, {"channel": names.user_channel(uid), "data": b"\xff\xfe"})
        rm_flask.publish(r, names.user_channel(uid), "fine")
        wait_until(lambda: "fine" in tab.payloads(), 10, "the good one after them")
        assert [m.get("encoding") for m in tab.messages] == ["base64", None], tab.messages
        wait_until(lambda: settled(r, [uid]), 10, "every entry acknowledged")
        for reason in ("fields", "channel", "too_large"):
            assert server.metric(f'rm_inbox_invalid_total{{reason="{reason}"}}') == 1
        assert "Inbox: dropping entry" in server.log()
        assert "Traceback" not in server.log()
    finally:
        tab.close()


def test_publish_and_inbox_to_one_user_each_arrive_in_their_own_order(inbox_r, tabs_on_two, uid):
    for n in range(200):
        if n % 2:
            inbox_r.publish(names.user_channel(uid), f"pub {n}")
        else:
            rm_flask.publish(inbox_r, names.user_channel(uid), f"inbox {n}")
    for tab in tabs_on_two:
        wait_until(lambda tab=tab: len(set(tab.payloads())) == 200, 20,
                   lambda tab=tab: f"all 200 (has {len(set(tab.payloads()))}; inbox: "
                                   f"{inbox_r.xlen(names.INBOX_KEY)} entries, {settled(inbox_r, [uid])=})")
        got = tab.first_payloads()
        for kind in ("pub", "inbox"):
            mine = [p for p in got if p.startswith(kind)]
            assert mine == sorted(mine, key=lambda p: int(p.split()[1])), f"{kind} in order"


def test_the_shell_command_adds_to_the_inbox_and_says_the_id(inbox_r, make_server, uid):
    env = {"RM_REDIS_PORT": str(inbox_r.connection_pool.connection_kwargs["port"])}
    command = [sys.executable, "-m", "rm_flask", "publish", names.user_channel(uid), "kept for later"]
    base = {k: v for k, v in os.environ.items() if not k.startswith("RM_")}
    result = subprocess.run(command, cwd=ROOT, env={**base, **env}, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    said = re.fullmatch(rf"added 14 bytes for rm\.users\.{re.escape(uid)} to the inbox: id (i-\d+-\d+)\n",
                        result.stdout)
    assert said, result.stdout
    server = make_server()
    tab = connected(server.url, ack(uid))
    try:
        wait_until(lambda: tab.payloads(), 20, "the message from the shell")
        assert [(m["payload"], m["id"]) for m in tab.messages] == [("kept for later", said[1])]
    finally:
        tab.close()


