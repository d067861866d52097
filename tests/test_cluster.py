"""Several RedMessenger processes on one Redis (SPEC §5.9), real processes and real Redis.

Rules 1-8 hold for the group of processes: a message is queued once, not once per
process; `bubble` and `user_conn_limit` count the user's sockets on every process; a
process killed with kill -9 gives back, through the survivors, what it held.

Every test starts its own servers with `make_server` (never the module's `server`: an
extra process on the session's Redis would take part in every test here).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import socketio

from rm_flask import names
from rm_flask.service import RECONNECT_GRACE
from tests.support.accounting import QueueSampler, Stream, account_tabs
from tests.support.clients import RMClient, ack, churn_by_fin
from tests.support.cluster import (
    MixedStream,
    copy_of,
    probe,
    queued_envelopes,
    received,
    start_servers,
    wait_processed,
)
from tests.support.processes import wait_until
from tests.support.proxy import Proxy


def wait_quiet(tabs, quiet: float = 1.0, timeout: float = 15) -> None:
    """Until no tab has received anything for `quiet` seconds."""
    last = {"count": -1, "since": time.monotonic()}

    def still() -> bool:
        count = sum(len(t.messages) for t in tabs)
        if count != last["count"]:
            last.update(count=count, since=time.monotonic())
        return time.monotonic() - last["since"] >= quiet

    wait_until(still, timeout, f"{quiet}s without a message")


def test_offline_user_is_queued_once_by_three_servers(make_server, r, uid, summary):
    """All three servers see each PUBLISH; the queue gets each one once, in order."""
    servers = start_servers(make_server, 3)
    before = received(servers)
    payloads = [f"{i}:{uid}" for i in range(500)]
    for payload in payloads:
        assert r.publish(f"rm.users.{uid}", payload) >= 3, "every server is subscribed"
    wait_processed(r, servers, before, 500, barrier_uid=f"{uid}-barrier")
    wait_until(lambda: r.llen(f"rm:users:{uid}:messages") >= 500, 10, "500 envelopes queued")
    queue = queued_envelopes(r, uid)
    print(f"3 servers, 500 PUBLISHes to an offline user: {len(queue)} queued, "
          f"{len({e['id'] for e in queue})} distinct ids, "
          f"{len({e['payload'] for e in queue})} distinct payloads")
    summary(sent=500, queued=len(queue), distinct_ids=len({e["id"] for e in queue}),
            in_order=[e["payload"] for e in queue] == payloads)
    assert len(queue) == 500, f"{len(queue)} envelopes queued for 500 PUBLISHes"
    assert len({e["id"] for e in queue}) == 500
    assert [e["payload"] for e in queue] == payloads


def test_user_online_on_one_of_three_servers_gets_each_message_once(make_server, clients, r, uid):
    """Online on B only: A and C must not queue what B delivers."""
    servers = start_servers(make_server, 3)
    tab = clients(servers[1].url, ack(uid))
    before = received(servers)
    payloads = [f"{i}:{uid}" for i in range(500)]
    for payload in payloads:
        r.publish(f"rm.users.{uid}", payload)
    tab.wait_for(500)
    wait_processed(r, servers, before, 500, barrier_uid=f"{uid}-barrier")
    wait_quiet([tab], quiet=0.5)  # a copy too many would have come by now
    got = tab.payloads()
    queue = queued_envelopes(r, uid)
    print(f"online on B of 3: {len(got)} received ({len(set(got))} distinct), {len(queue)} queued")
    assert got == payloads, "each message once, in order"
    assert queue == [], f"{len(queue)} envelopes queued for a user who is online (on another server)"
    assert not tab.disconnected.is_set()


def two_tabs_identify_together(servers, r, uid: str, n: int) -> int:
    """500 queued, then a tab on each of two processes identifies at the same moment as
    200 more are published; each tab must get all 700 once, in order. Returns the
    duplicates received."""
    channel = f"rm.users.{uid}"
    queued = [f"r{n} q{i:03d}" for i in range(500)]
    live = [f"r{n} live{i:03d}" for i in range(200)]
    for payload in queued:
        r.publish(channel, payload)
    wait_until(lambda: r.llen(f"rm:users:{uid}:messages") == 500, 10, "500 queued")
    tabs = [RMClient(s.url).connect() for s in servers]
    barrier = threading.Barrier(3)

    def identify(tab):
        barrier.wait(5)
        assert tab.identify(ack(uid)) == {"ok": True, "uid": uid}

    def publish_live():
        barrier.wait(5)
        for payload in live:
            r.publish(channel, payload)
            time.sleep(0.002)

    threads = [threading.Thread(target=identify, args=(t,)) for t in tabs]
    threads.append(threading.Thread(target=publish_live))
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        for tab in tabs:
            wait_until(lambda tab=tab: set(queued + live) <= set(tab.payloads()), 20,
                       "each tab to get the queue and the live messages")
        wait_quiet(tabs, quiet=0.5)
        duplicates = 0
        for i, tab in enumerate(tabs):
            got = tab.payloads()
            duplicates += len(got) - len(set(got))
            assert got == queued + live, f"tab {i} (on process {i}): each message once, in order"
        wait_until(lambda: r.llen(f"rm:users:{uid}:messages") == 0, 5, "queue empty")
        wait_until(lambda: not any(r.zcard(k) for k in r.scan_iter(f"rm:inflight:*:{uid}")), 10,
                   "the acks to clear in-flight")
    finally:
        for tab in tabs:
            tab.close()
    wait_until(lambda: not r.exists(f"rm:cluster:users:{uid}"), 10, "both tabs gone")
    return duplicates


def test_two_tabs_on_two_processes_each_get_the_queue_then_live_in_order(make_server, r, uid, summary):
    """SPEC §5.4 across processes (issue #10 item 6): two tabs of an offline user
    identify at the same moment, on two processes, while messages keep coming: each tab
    gets every queued message once, then every later one, all in order; nothing is left
    queued or in flight. Before, the tab away from the drain got none of the queue."""
    servers = start_servers(make_server, 2)
    rounds = 3
    duplicates = sum(two_tabs_identify_together(servers, r, uid, n) for n in range(rounds))
    summary(rounds=rounds, duplicates=duplicates)


def test_a_message_sent_live_and_again_from_the_queue_leaves_nothing_in_flight(make_server, r, uid, summary):
    """A user's tabs on processes A and B; B's live copy of a message is not acknowledged
    yet when A's tab leaves, A gives its copy back, and B's drain sends it again. Each
    process made its own envelope (its own timestamp), so B held the one message in
    flight as two records; the tab's ack must clear both. Before, the live copy's record
    stayed in flight for ever (the churn test's stale records, issue #10)."""
    a, b = start_servers(make_server, 2)
    t0 = RMClient(a.url).connect()
    t1 = RMClient(b.url).connect()
    try:
        for tab in (t0, t1):
            assert tab.identify(ack(uid)) == {"ok": True, "uid": uid}
        probe(r, uid, [t0, t1])  # both processes know both tabs
        # The first identify began a drain on A, which B (the owner, maybe) must certify
        # before A's live messages flow again: stopping B before that would hold A's copy
        # too (CI, once). Over in Redis, then a probe through both tabs: A holds nothing.
        wait_until(lambda: not r.hexists(names.DRAINING_KEY, uid), 10, "the first drain over")
        probe(r, uid, [t0, t1])
        t0.auto_ack = t1.auto_ack = False
        # B reads the message a few milliseconds after A: its envelope's timestamp differs.
        os.kill(b.process.pid, signal.SIGSTOP)
        try:
            r.publish(f"rm.users.{uid}", "the message")
            wait_until(lambda: copy_of(t0, "the message"), 10, "A's copy at tab 0")
            time.sleep(0.005)
        finally:
            os.kill(b.process.pid, signal.SIGCONT)
        wait_until(lambda: copy_of(t1, "the message"), 10, "B's live copy at tab 1")
        first_a, first_b = copy_of(t0, "the message"), copy_of(t1, "the message")
        assert first_a["id"] == first_b["id"], (first_a, first_b)
        assert first_a["timestamp"] != first_b["timestamp"], "two envelopes of one message"
        t1.auto_ack = True
        t0.close()  # A gives its copy back; B drains it to tab 1
        wait_until(lambda: t1.payloads().count("the message") == 2, 10, "the drained copy at tab 1")
        copies = [m for m in t1.messages if m["payload"] == "the message"]

        def settled() -> bool:
            return not r.llen(f"rm:users:{uid}:messages") and not any(
                r.zcard(k) for k in r.scan_iter(f"rm:inflight:*:{uid}"))

        try:
            wait_until(settled, 10, "nothing queued or in flight")
        finally:
            left = {k: r.zrange(k, 0, -1) for k in r.scan_iter(f"rm:inflight:*:{uid}")}
            summary(received=len(copies), same_id=len({m["id"] for m in copies}) == 1,
                    in_flight_left=sum(map(len, left.values())))
        assert {m["id"] for m in copies} == {first_b["id"]}, "a re-delivery keeps the message's id"
    finally:
        t0.close()
        t1.close()


def replacing_tab(make_server, r, uid):
    """Tab 0 on A holds 5 messages unacknowledged (a tab whose network is about to go);
    tab 1, its replacement, identifies on B. Returns the servers, the tabs and the five."""
    a, b = start_servers(make_server, 2)
    old = RMClient(a.url).connect()
    assert old.identify(ack(uid)) == {"ok": True, "uid": uid}
    wait_until(lambda: not r.hexists(names.DRAINING_KEY, uid), 10, "the first drain over")
    probe(r, uid, [old])
    old.auto_ack = False
    held = [f"held {n}" for n in range(5)]
    for payload in held:
        assert r.publish(f"rm.users.{uid}", payload) == 2
    wait_until(lambda: all(copy_of(old, p) for p in held), 10, "the five at tab 0")
    return a, b, old, RMClient(b.url).connect(), held


def test_a_tab_that_replaces_one_on_another_process_gets_what_that_one_held_first(
        make_server, r, uid, summary):
    """SPEC §5.6, a tab reconnecting elsewhere: what the old tab holds unacknowledged
    reaches the new one before anything newer. Before, it came only once the old tab's
    process gave it back (through the queue), after every message published meanwhile:
    the churn test's "late after a reconnect", 0 to 195 a run."""
    a, b, old, new, held = replacing_tab(make_server, r, uid)
    try:
        assert new.identify(ack(uid)) == {"ok": True, "uid": uid}
        later = [f"later {n}" for n in range(5)]
        for payload in later:
            r.publish(f"rm.users.{uid}", payload)
        wait_until(lambda: set(held + later) <= set(new.payloads()), 10,
                   lambda: f"all ten at tab 1 (has {new.payloads()})")
        old.drop()  # gone without a goodbye: A gives back what it held, B drains it again
        wait_until(lambda: not r.llen(f"rm:users:{uid}:messages") and not any(
            r.zcard(k) for k in r.scan_iter(f"rm:inflight:*:{uid}")), 10, "nothing queued or in flight")
        again = Counter(new.payloads()) - Counter(set(new.payloads()))
        summary(received=len(set(new.payloads())), duplicated=sum(again.values()))
        seen = [p for p in new.first_payloads() if not p.startswith("probe:")]
        assert seen == held + later, "the old tab's messages first, then the newer"
        ids = {m["payload"]: {n["id"] for n in new.messages if n["payload"] == m["payload"]}
               for m in new.messages}
        assert all(len(v) == 1 for v in ids.values()), "a copy sent again keeps its id"
    finally:
        old.close()
        new.close()


def test_a_tab_that_replaces_one_on_a_killed_process_gets_what_that_one_held_first(
        make_server, r, uid, summary):
    """The old tab's process is stopped when the new tab joins, so it cannot replay, and
    is then killed (`kill -9`): the new tab waits for the redo of its work, and gets
    what the old tab held before the newer messages sent to it meanwhile. Before, it
    stopped waiting at the `down`, and the held ones came through the queue after them."""
    # A missing connection is evidence of a death only once Redis has been up long enough
    # for every server to have reconnected (`RECONNECT_GRACE`).
    wait_until(lambda: int(r.info("server")["uptime_in_seconds"]) >= RECONNECT_GRACE, 10, "Redis up 6 s")
    a, b, old, new, held = replacing_tab(make_server, r, uid)
    os.kill(a.process.pid, signal.SIGSTOP)
    try:
        assert new.identify(ack(uid)) == {"ok": True, "uid": uid}
        later = [f"later {n}" for n in range(5)]
        for payload in later:
            r.publish(f"rm.users.{uid}", payload)
        a.kill()
        wait_until(lambda: set(held + later) <= set(new.payloads()), 15,
                   lambda: f"all ten at tab 1 (has {new.payloads()})")
        wait_until(lambda: not r.llen(f"rm:users:{uid}:messages") and not any(
            r.zcard(k) for k in r.scan_iter(f"rm:inflight:*:{uid}")), 10, "nothing queued or in flight")
        summary(received=len(set(new.payloads())), duplicated=len(new.payloads()) - len(set(new.payloads())))
        assert "no replay from" not in b.log(), "A was declared dead within the 3 s a replay is waited for"
        seen = [p for p in new.first_payloads() if not p.startswith("probe:")]
        assert seen == held + later, "the old tab's messages first, then the newer"
    finally:
        old.close()
        new.close()


def test_a_tab_waits_for_a_paused_processs_replay_3_s_at_most(make_server, r, uid, summary):
    """The process holding the old tab is paused when the new tab joins: the new tab is
    not held for ever (3 s, `REPLAY_WITHIN`), and gets the held messages once that
    process resumes, late but each one."""
    a, b, old, new, held = replacing_tab(make_server, r, uid)
    os.kill(a.process.pid, signal.SIGSTOP)
    try:
        assert new.identify(ack(uid)) == {"ok": True, "uid": uid}
        joined = time.monotonic()
        r.publish(f"rm.users.{uid}", "later")
        wait_until(lambda: "later" in new.payloads(), 10, "the newer message, once the wait is over")
        waited = time.monotonic() - joined
    finally:
        os.kill(a.process.pid, signal.SIGCONT)
    try:
        wait_until(lambda: set(held) <= set(new.payloads()), 10,
                   lambda: f"the five at tab 1 once A resumed (has {new.payloads()})")
        summary(waited_s=round(waited, 2))
        assert 2 < waited < 8, waited
        assert "no replay from" in b.log()
    finally:
        old.close()
        new.close()


def bubbles(tabs, payloads):
    """For each payload: the bubble flag of its copy on each tab (None: not received)."""
    return [[(copy_of(t, p) or {}).get("bubble") for t in tabs] for p in payloads]


def received_once(tabs, payloads) -> bool:
    return all(Counter(t.payloads())[p] == 1 for t in tabs for p in payloads)


def test_bubble_is_on_the_oldest_socket_across_processes(make_server, clients, r, uid):
    """Tabs on A, then B, then C: bubble on A's only, with one id for the three copies;
    when it closes, on B's."""
    servers = start_servers(make_server, 3)
    tabs = []
    for server in servers:  # tab1 on A, then tab2 on B, then tab3 on C
        tabs.append(clients(server.url, ack(uid)))
        probe(r, uid, tabs[-1:])  # this tab receives before the next one opens

    first = [f"first {i}" for i in range(20)]
    for payload in first:
        r.publish(f"rm.users.{uid}", payload)
    wait_until(lambda: all(p in t.payloads() for t in tabs for p in first), 10, "20 messages on all 3 tabs")
    assert received_once(tabs, first)
    flags = bubbles(tabs, first)
    print("bubble on (tab1, tab2, tab3):", Counter(map(tuple, flags)))
    assert flags == [[True, False, False]] * 20, "bubble on tab1 only, the oldest"
    for p in first:
        ids = {copy_of(t, p)["id"] for t in tabs}
        assert len(ids) == 1, f"{p!r} reached the three tabs with ids {ids}"
    assert len({copy_of(tabs[0], p)["id"] for p in first}) == 20

    tabs[0].close()
    started = time.monotonic()
    probe(r, uid, tabs[1:], accept=lambda copies: [c["bubble"] for c in copies] == [True, False])
    print(f"tab2 has bubble {time.monotonic() - started:.2f}s after tab1 closed")
    later = [f"later {i}" for i in range(20)]
    for payload in later:
        r.publish(f"rm.users.{uid}", payload)
    wait_until(lambda: all(p in t.payloads() for t in tabs[1:] for p in later), 10,
               "20 messages on tabs 2, 3")
    assert received_once(tabs[1:], later)
    assert bubbles(tabs[1:], later) == [[True, False]] * 20, "bubble on tab2 only, now the oldest"
    assert not any(p in tabs[0].payloads() for p in later)


def test_user_conn_limit_counts_sockets_on_every_process(make_server, clients, r, uid):
    """user_conn_limit 2, one tab on each of A, B, C: the third closes the first."""
    servers = start_servers(make_server, 3, user_conn_limit=2)
    tab1 = clients(servers[0].url, ack(uid))
    probe(r, uid, [tab1])
    tab2 = clients(servers[1].url, ack(uid))
    probe(r, uid, [tab1, tab2])  # two sockets are within the limit: both are served
    assert not tab1.disconnected.is_set()
    tab3 = clients(servers[2].url, ack(uid))
    probe(r, uid, [tab3])
    wait_until(tab1.disconnected.is_set, 10, "tab1, the oldest socket (on A), to be disconnected")
    print("tab1 errors:", tab1.errors)
    copies = probe(r, uid, [tab2, tab3], accept=lambda copies: copies[0]["bubble"])
    assert [c["bubble"] for c in copies] == [True, False]
    payloads = [f"after {i}" for i in range(10)]
    for payload in payloads:
        r.publish(f"rm.users.{uid}", payload)
    wait_until(lambda: all(p in t.payloads() for t in (tab2, tab3) for p in payloads), 10,
               "tabs 2 and 3 to keep receiving")
    assert not tab2.disconnected.is_set() and not tab3.disconnected.is_set()


def queued_twice(r, uids) -> dict[str, tuple[int, int, int]]:
    """Queues in which an id or a payload appears more than once: uid -> (length, ids, payloads)."""
    found = {}
    for u in uids:
        queue = queued_envelopes(r, u)
        ids = sum(1 for n in Counter(e["id"] for e in queue).values() if n > 1)
        payloads = sum(1 for n in Counter(e["payload"] for e in queue).values() if n > 1)
        if ids or payloads:
            found[u] = (len(queue), ids, payloads)
    return found


@pytest.fixture
def patient_tabs():
    """Tabs that wait up to 30 s to connect and identify (the churn test keeps a 2-core
    machine busy), all closed after the test. A connection the machine's load broke
    before its namespace joined is tried again, as a browser would (at most twice, and
    said on stdout): nothing was identified on it, so nothing was owed to it."""
    made: list[RMClient] = []

    def make(url: str, uid: str) -> RMClient:
        for attempt in range(3):
            tab = RMClient(url)
            made.append(tab)
            tab.sio.eio.request_timeout = 30  # the WebSocket handshake's (5 s by default)
            try:
                tab.connect(timeout=30)
                break
            except socketio.exceptions.ConnectionError as exc:
                tab.close()
                if attempt == 2:
                    raise
                print(f"{uid}: connecting again after: {exc}")
        reply = tab.identify(ack(uid), timeout=30)
        assert reply == {"ok": True, "uid": uid}, reply
        return tab

    yield make
    for tab in made:
        tab.close()


def received_by_uid(tabs_by_uid) -> dict[str, list[str]]:
    return {u: [p for t in tabs for p in t.payloads()] for u, tabs in tabs_by_uid.items()}


def explain(stream, tabs_by_uid, r, counts, t0: float) -> str:
    """Where the first out-of-order pairs, and the first lost messages, were: for each
    payload, when it was published (s after t0) and which of the user's tabs (index,
    server port) got it first."""

    def where(u: str, p: str) -> str:
        got = [f"tab {i} on {t.url.rsplit(':', 1)[1]}"
               for i, t in enumerate(tabs_by_uid[u]) if p in t.payloads()]
        return f"{p.split(':')[0]} (published {stream.sent_at[p] - t0:.2f}s, {got[0] if got else 'nowhere'})"

    lines = [f"{u} ({len(tabs_by_uid[u])} tabs): got {where(u, p)} late"
             for u, p, *_ in counts.get("examples", {}).get("out_of_order", [])[:3]]
    for u in stream.uids:
        got = {p for t in tabs_by_uid[u] for p in t.payloads()}
        queued = {e["payload"] for e in queued_envelopes(r, u)}
        lines += [f"lost for {u} ({len(tabs_by_uid[u])} tabs): {where(u, p)}"
                  for p in stream.owed.get(u, []) if p not in got and p not in queued][:3]
    return "; ".join(lines[:8])


# README and docs/cluster.md, "Late after a reconnect": a tab that drops without a
# goodbye and reconnects to another process before the first one noticed can get the old
# tab's unacknowledged messages after newer ones: "0 to 4 of 34,151 deliveries".
LATE_CLAIMED = 4


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("vanishing", [
    pytest.param(False, id="closed"),
    pytest.param(True, id="closed-and-vanished"),
])
def test_300_ack_clients_churning_over_3_servers_during_20000_messages(make_server, patient_tabs, proxy_to, r,
                                                                       uid, summary, vanishing):
    """Like the single-server churn test of test_faults, over three servers and with
    group messages: every message owed is received, or queued once; none lost; no queue
    ever holds a message twice; late only as the README allows.

    Drops, half each: a goodbye and a bare FIN (the README's "abrupt"). With `vanishing`,
    a third of the tabs come through a proxy in front of their server, and those drop by
    vanishing instead: the proxy stops forwarding; noticed by pings alone."""
    servers = start_servers(make_server, 3, log_level="warning", ping_interval=2, ping_timeout=3)
    proxies = {s.url: proxy_to(s) for s in servers}
    rng = random.Random(7)
    uids = [f"{uid}-{i}" for i in range(300)]
    groups = {f"{uid}-g{j}": rng.sample(uids, rng.randint(3, 6)) for j in range(30)}
    for cid, members in groups.items():
        r.sadd(f"rm:channels:{cid}:subscribers", *members)
    through: dict[int, Proxy] = {}  # id() of a tab that came through a proxy -> that proxy

    def open_tab(url: str, u: str, rng: random.Random) -> RMClient:
        # A third of the tabs come through their server's proxy: those can vanish.
        if vanishing and rng.random() < 1 / 3:
            tab = patient_tabs(proxies[url].url, u)
            through[id(tab)] = proxies[url]
            return tab
        return patient_tabs(url, u)

    with ThreadPoolExecutor(8) as pool:
        first = list(pool.map(lambda i: open_tab(servers[i % 3].url, uids[i], random.Random(i)), range(300)))
    tabs_by_uid = {u: [t] for u, t in zip(uids, first, strict=True)}
    live = dict(zip(uids, first, strict=True))
    stream = MixedStream(r, uids, groups=groups, group_share=0.2)
    before = received(servers)
    started = time.monotonic()
    stop = threading.Event()  # set when a churner fails: then everything stops
    publisher = threading.Thread(target=stream.publish, args=(20_000, 2000), kwargs={"stop": stop})
    drops: Counter[str] = Counter()
    lock = threading.Lock()

    def churn(mine: list[str], seed: int) -> None:
        """Random drops (a goodbye, a FIN, or vanishing) and comebacks, to any server, of `mine`."""
        rng = random.Random(seed)
        try:
            while publisher.is_alive() and not stop.is_set():
                u = rng.choice(mine)
                tab = live.pop(u, None)
                if tab is not None:
                    if id(tab) in through:
                        tab.vanish(through[id(tab)])
                        how = "vanished"
                    elif rng.random() < 0.5:
                        tab.drop()
                        how = "abrupt"
                    else:
                        tab.close()
                        how = "graceful"
                    with lock:
                        drops[how] += 1
                if rng.random() < 0.8 or tab is None:
                    new = open_tab(rng.choice(servers).url, u, rng)
                    tabs_by_uid[u].append(new)
                    live[u] = new
                time.sleep(0.01)
        except BaseException:
            stop.set()
            raise

    sampler = QueueSampler(r, uids)
    try:
        with sampler:
            publisher.start()
            with ThreadPoolExecutor(4) as pool:  # four churners, each with users of its own
                for churner in [pool.submit(churn, uids[k::4], k) for k in range(4)]:
                    churner.result()
            stop.set()  # the publisher is done by now, unless a churner failed
            publisher.join()
            wait_processed(r, servers, before, stream.publishes, barrier_uid=f"{uid}-barrier", timeout=60)
            offline = len(uids) - len(live)
            queued_at_end = sum(len(queued_envelopes(r, u)) for u in uids)

            comeback = time.monotonic()
            cut_by_server: list[str] = []

            def back_online() -> None:
                """Everyone online, to any server. A tab the server closed (a ping answered
                too late, on a machine this busy), also while the queues drain, comes back
                as the JS client would."""
                for u in uids:
                    tab = live.get(u)
                    if tab is not None and tab.disconnected.is_set():
                        cut_by_server.append(u)
                        tab = None
                    if tab is None:
                        live[u] = open_tab(rng.choice(servers).url, u, rng)
                        tabs_by_uid[u].append(live[u])

            back_online()
            owed = stream.sent

            def all_there() -> bool:
                back_online()
                return sum(len(set(v)) for v in received_by_uid(tabs_by_uid).values()) >= owed

            try:
                wait_until(all_there, 60, f"{owed} distinct deliveries")
            except AssertionError:
                pass  # counted below
            drained_in = time.monotonic() - comeback

            # Vanished tabs are noticed by pings alone (5 s): until then what they were
            # sent is in flight, and then it is given back and drained again.
            def settled() -> bool:
                back_online()
                return not any(r.zcard(k) for k in r.scan_iter("rm:inflight:*:*")) and not any(
                    r.llen(f"rm:users:{u}:messages") for u in uids)

            try:
                wait_until(settled, 30, "nothing left in flight or queued, every user being online")
            except AssertionError:
                pass  # counted below
        counts = account_tabs(stream, tabs_by_uid, r)
        in_flight = sum(r.zcard(k) for k in r.scan_iter("rm:inflight:*:*"))
        queued_for_online = sum(r.llen(f"rm:users:{u}:messages") for u in uids)
        left_queued = [u for u in uids if r.llen(f"rm:users:{u}:messages")]
        stuck_state = Counter(
            ("tab cut by its server" if live[u].disconnected.is_set() else "tab open")
            + (", sockets in Redis" if r.exists(f"rm:cluster:users:{u}") else ", no socket in Redis")
            for u in left_queued)
    finally:
        stop.set()
        publisher.join()
    queues = sampler.figures()
    summary(**{k: v for k, v in counts.items() if k != "examples"}, owed=owed, publishes=stream.publishes,
            drops=dict(drops), offline_before_comeback=offline, queued_before_comeback=queued_at_end,
            drained_in_s=round(drained_in, 1), cut_by_server=len(cut_by_server), in_flight_at_end=in_flight,
            queued_for_online_at_end=queued_for_online, **queues)
    print(f"cluster churn: sent {stream.publishes} in {stream.elapsed:.1f}s, owed {owed}, {counts}, "
          f"drops {dict(drops)}, {queues}, queue twice at {sampler.twice[:5]}, out of order at "
          f"{sampler.disordered[:5]}; drained {drained_in:.1f}s after the final reconnect began, "
          f"{time.monotonic() - started:.1f}s in all; users left with a queue: {dict(stuck_state)}",
          explain(stream, tabs_by_uid, r, counts, started))
    assert counts["lost"] == 0
    assert queues["queues_holding_a_message_twice"] == 0, "no queue ever held a message twice"
    assert counts["two_ids"] == 0, "a re-delivery keeps the message's id"
    assert counts["received"] == owed, f"queued for users online: {queued_for_online} ({dict(stuck_state)})"
    assert queues["queues_out_of_order"] == 0, f"a queue out of order at {sampler.disordered[:3]}"
    assert in_flight == 0, "everything sent is acknowledged or given back"
    assert queued_for_online == 0, "every user is online: every queue drains"
    # What a vanished tab's server sent it reaches the user's next tabs only once that
    # server noticed (README, "late after a reconnect"): reported, not counted against
    # the claim. What else is late does not hold the claim in every run yet (issue #10):
    # said, with the figures, once everything above has held.
    if counts["out_of_order"] - counts["late_after_vanished"] > LATE_CLAIMED:
        pytest.xfail(f"issue #10: {counts['out_of_order']} late after reconnects, "
                     f"{counts['late_after_vanished']} of them after a tab vanished (README: at most "
                     f"{LATE_CLAIMED} others in most runs): {counts['examples'].get('out_of_order', [])[:2]}")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_60_ack_tabs_dropping_by_fin_on_3_servers_each_back_on_its_own(make_server, r, summary):
    """60 ack-mode users over 3 processes at 3,000 msg/s, whose tabs drop with a bare FIN
    about once a second each and come back at once on the same process: every message
    received, 0 late, 0 sent again after an ack, nothing left in flight, and every queue
    drained (every user is online). A tab that left before its `on` was read began a
    drain that never ran: in 4 of 15 runs on 3 December a user's queue held 40-236
    messages at the end; on the code before the day's fixes, 16-31 were sent again after
    an ack (3 runs)."""
    servers = start_servers(make_server, 3, log_level="warning", ping_interval=2, ping_timeout=3)
    uids = [f"h{i}" for i in range(60)]
    stream = Stream(r, uids)
    tabs_by_uid, drops = churn_by_fin(lambda u: servers[int(u[1:]) % 3].url, uids,
                                      lambda: stream.publish(30_000, 3000))

    def in_flight() -> dict[str, int]:
        return {k.decode(): r.zcard(k) for k in r.scan_iter("rm:inflight:*:*")}

    try:
        wait_until(lambda: sum(map(len, map(set, received_by_uid(tabs_by_uid).values()))) >= stream.sent,
                   60, f"{stream.sent} distinct deliveries")
        wait_until(lambda: not in_flight(), 30, "in-flight sets to empty")
    except AssertionError:
        pass  # counted below
    counts = account_tabs(stream, tabs_by_uid, r)
    stuck = {u: n for u in uids if (n := r.llen(names.queue_key(u)))}
    summary(**{k: v for k, v in counts.items() if k != "examples"}, drops=drops, left_in_flight=in_flight(),
            stuck_queues=stuck)
    print("FIN churn on 3:", counts, f"{drops} drops, in flight {in_flight()}, queues left {stuck}")
    assert counts["lost"] == 0 and not stuck and counts["received"] == counts["sent"] == 30_000, counts
    assert counts["two_ids"] == 0, "a re-delivery keeps the message's id"
    assert not in_flight(), "nothing left in flight"
    assert counts["redelivered_after_ack"] == 0, counts["examples"].get("redelivered_after_ack")
    assert counts["out_of_order"] == 0, counts["examples"].get("out_of_order")
    for tabs in tabs_by_uid.values():
        for tab in tabs:
            tab.close()


@pytest.mark.slow
def test_kill_9_one_of_3_servers_mid_stream(make_server, clients, r, uid, summary):
    """B dies; its users reconnect to A or C. README: they "got every message, 0 lost, 0 out
    of order", and a survivor merged B's work "into the queues in order": every message
    published with a subscriber arrives, each user's first copies in publish order, and
    no queue is ever out of order or holds a message twice meanwhile."""
    servers = start_servers(make_server, 3, log_level="warning")
    a, b, c = servers
    rng = random.Random(3)
    uids = [f"{uid}-{i}" for i in range(60)]
    tabs_by_uid = {u: [clients(servers[i % 3].url, ack(u))] for i, u in enumerate(uids)}
    on_b = uids[1::3]
    stream = Stream(r, uids)
    stop = threading.Event()
    publisher = threading.Thread(target=stream.publish, args=(1_000_000, 1000), kwargs={"stop": stop})
    back_at: dict[str, float] = {}
    sampler = QueueSampler(r, uids, interval=0.05)
    with sampler:
        publisher.start()
        try:
            wait_until(lambda: stream.sent >= 2000, 20, "2,000 messages before the kill")
            killed = time.monotonic()
            b.kill()
            sent_at_kill = stream.sent
            for u in on_b:  # each of B's tabs notices, and its user comes back on A or C
                assert tabs_by_uid[u][0].disconnected.wait(10), f"{u}'s tab on B did not notice B die"
                tabs_by_uid[u].append(clients(rng.choice([a, c]).url, ack(u)))
                back_at[u] = time.monotonic()
            reconnected = time.monotonic() - killed
            wait_until(lambda: stream.sent >= sent_at_kill + 2000, 20, "2,000 messages after the kill")
        finally:
            stop.set()
            publisher.join(10)
        all_tabs = [t for tabs in tabs_by_uid.values() for t in tabs]

        def missing() -> dict[str, set[str]]:
            got = {u: set(ps) for u, ps in received_by_uid(tabs_by_uid).items()}
            return {u: set(stream.owed[u]) - got[u] for u in uids}

        try:
            wait_until(lambda: not any(missing().values()), 40, "every owed message to be received")
            wait_quiet(all_tabs)
        except AssertionError:
            pass  # counted below
    away = {u: [p for p in stream.owed[u] if killed <= stream.sent_at[p] < back_at[u]] for u in on_b}
    gone = missing()
    counts = account_tabs(stream, tabs_by_uid, r)
    away_missing = sum(1 for u, ps in away.items() for p in ps if p in gone[u])
    on_b_dup = account_tabs(Stream(r, on_b, owed={u: stream.owed[u] for u in on_b}),
                            {u: tabs_by_uid[u] for u in on_b}, r)["duplicated"]
    queues = sampler.figures()
    summary(**{k: v for k, v in counts.items() if k != "examples"}, not_received=sum(map(len, gone.values())),
            duplicated_on_b_users=on_b_dup, away=sum(map(len, away.values())), away_missing=away_missing,
            reconnected_s=round(reconnected, 2), **queues)
    print(f"kill -9 of 1 of 3: sent {stream.sent}, {counts}, not received {sum(map(len, gone.values()))} "
          f"(of them on B's users {sum(len(gone[u]) for u in on_b)}), published while B's users were away "
          f"{sum(map(len, away.values()))} (missing {away_missing}), duplicates on B's users {on_b_dup}, "
          f"{queues}, all of B's users back {reconnected:.2f}s after the kill.",
          explain(stream, tabs_by_uid, r, counts, killed))
    assert counts["lost"] == 0 and not any(gone.values()), "every owed message received"
    assert sum(map(len, away.values())) > 0, "some messages were published while B's users were away"
    assert away_missing == 0
    assert queues["queues_out_of_order"] == 0 and queues["queues_holding_a_message_twice"] == 0, (
        "merged into the queues in order, each id once")
    assert counts["two_ids"] == 0, "a re-delivery keeps the message's id"
    if counts["out_of_order"]:
        # README "late after a reconnect": a tab that comes back elsewhere may get a newer
        # message before one the dead process held (1 in 1 of 9 runs so far). Said, with
        # the figures, once everything above has held.
        pytest.xfail(f"issue #10: {counts['out_of_order']} late after the reconnect: "
                     f"{counts['examples'].get('out_of_order')}")
