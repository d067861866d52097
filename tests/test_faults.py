"""Faults, counted message by message: Redis outages, dying clients, a killed server.

Each test publishes a stream, breaks something in the middle, and then accounts for
every message that a server received (PUBLISH returned 1): received by a client, or
still queued in Redis. Lost must be 0; duplicates are reported.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests

from rm_flask import names
from tests.support.accounting import Stream, account_tabs, queued_envelopes
from tests.support.clients import RMClient, churn_by_fin
from tests.support.processes import ServerProcess, start_redis, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def own_redis(tmp_path):
    """A Redis of the test's own, which it may kill; fsync always, so Redis loses nothing."""
    server = start_redis(tmp_path / "redis", persist=True, fsync_always=True)
    yield server
    server.stop()


@pytest.fixture
def own_server(own_redis, tmp_path):
    """A server on the test's own Redis, and a client of that Redis."""
    server = ServerProcess(own_redis.port, tmp_path, log_level="warning").start()
    yield redis.Redis(port=own_redis.port), server
    server.stop()


def connect_all(url: str, uids: list[str], **kwargs) -> dict[str, RMClient]:
    tabs = {}
    for uid in uids:
        tab = RMClient(url, **kwargs).connect()
        assert tab.identify({"uid": uid, "ack": True}) == {"ok": True, "uid": uid}
        tabs[uid] = tab
    return tabs


def received_by_uid(tabs_by_uid: dict[str, list[RMClient]]) -> dict[str, list[str]]:
    return {uid: [p for t in tabs for p in t.payloads()] for uid, tabs in tabs_by_uid.items()}


def wait_settled(r: redis.Redis, timeout: float = 30) -> None:
    """Until no server holds anything in flight."""
    wait_until(lambda: not [k for k in r.scan_iter("rm:inflight:*:*")], timeout, "in-flight sets to empty")


def test_redis_outage_with_200_ack_clients(own_redis, own_server, summary):
    """Redis is SIGKILLed under a stream to 200 ack-mode clients and back 2 s later.

    README: "every message published while the server was subscribed was delivered, 0
    lost". Owed is counted from the outside: every PUBLISH that Redis answered with at
    least one subscriber (tests/support/accounting.py), up to the kill and after the
    restart alike; each must reach its tab, in order.
    """
    r, server = own_server
    uids = [f"o{i}" for i in range(200)]
    tabs = connect_all(server.url, uids)
    stream = Stream(r, uids)
    health: list[int] = []
    stop = threading.Event()

    def watch_health():
        while not stop.is_set():
            try:
                health.append(requests.get(server.url + "/healthz", timeout=2).status_code)
            except requests.RequestException:
                health.append(0)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_health)
    watcher.start()
    publisher = threading.Thread(target=stream.publish, args=(1_000_000, 500), kwargs={"stop": stop})
    publisher.start()
    try:
        wait_until(lambda: stream.sent >= 1000, 20, "1,000 messages before the outage")
        killed = time.monotonic()
        own_redis.kill()
        wait_until(lambda: 503 in health, 15, "/healthz to go red")
        wait_until(lambda: not server.health()[1]["accepting"], 5, "the server to stop accepting")
        # An identify meanwhile is told at once, rather than left hanging.
        newcomer = RMClient(server.url).connect()
        asked = time.monotonic()
        assert newcomer.identify({"uid": "late", "ack": True}) == {"ok": False, "error": "unavailable"}
        assert time.monotonic() - asked < 2
        newcomer.close()
        time.sleep(2)  # the outage itself: Redis stays down 2 s
        own_redis.start()
        restarted = time.monotonic()
        wait_until(lambda: health[-1] == 200, 15, "/healthz to go green")
        recovered = time.monotonic() - restarted
        sent_at_recovery = stream.sent
        wait_until(lambda: stream.sent >= sent_at_recovery + 1000, 20, "1,000 messages after the outage")
    finally:
        stop.set()
        publisher.join(10)
        watcher.join(5)
    # Sockets stayed connected and receive again, without identifying again.
    assert all(not t.disconnected.is_set() for t in tabs.values())
    must = {p for ps in stream.owed.values() for p in ps}

    def received() -> set[str]:
        return {p for t in tabs.values() for p in t.payloads()}

    try:
        wait_until(lambda: must <= received(), 30, f"{len(must)} deliveries")
    except AssertionError:
        pass  # counted below
    counts = account_tabs(stream, {u: [t] for u, t in tabs.items()}, r)
    missing = sorted(must - received(), key=stream.sent_at.get)
    around_kill = [round(stream.sent_at[p] - killed, 3) for p in missing]
    summary(**{k: v for k, v in counts.items() if k != "examples"},
            green_after_redis_back_s=round(recovered, 2), missing_published_s_after_kill=around_kill[:10])
    print("redis outage:", counts, f"green {recovered:.1f}s after Redis came back",
          "missing (s after kill):", list(zip(missing, around_kill, strict=True))[:10],
          f"restarted {restarted - killed:.2f}s after kill", server.log_path)
    assert counts["lost"] == 0, f"{counts['lost']} lost, published at {around_kill[:10]} s after the kill"
    assert counts["out_of_order"] == 0
    assert recovered < 5
    for tab in tabs.values():
        tab.close()


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("vanishing", "ack"), [(False, True), (True, True), (False, "batch")],
                         ids=["closed", "closed-and-vanished", "closed-batch-acks"])
def test_200_ack_clients_churning_during_20000_messages(make_server, proxy_to, r, summary, vanishing, ack):
    """README: 200 ack-mode clients connecting and dropping at random during 20,000
    messages: all received, 0 lost, 0 out of order; the duplicates are messages a tab had
    received but not acknowledged, delivered again with the same id.

    Drops of two kinds, half each: a goodbye (Socket.IO disconnect) and a bare FIN. With
    `vanishing`, a third of the tabs come through a proxy, and those drop by vanishing
    instead: the proxy stops forwarding, so the server notices by pings alone, within
    ping_interval + ping_timeout. With `ack="batch"` the tabs acknowledge with `ack`
    events (SPEC §4), as the JS client does."""
    server = make_server(log_level="warning", ping_interval=2, ping_timeout=3)
    proxy = proxy_to(server)
    uids = [f"c{i}" for i in range(200)]
    tabs_by_uid: dict[str, list[RMClient]] = {u: [] for u in uids}
    live: dict[str, RMClient] = {}
    proxied: set[int] = set()  # id() of the tabs that came through the proxy

    def comes_back(uid: str, rng: random.Random) -> RMClient:
        # A third of the tabs come through the proxy: those are the ones that can vanish.
        via_proxy = vanishing and rng.random() < 1 / 3
        tab = RMClient(proxy.url if via_proxy else server.url).connect(timeout=30)
        if via_proxy:
            proxied.add(id(tab))
        tabs_by_uid[uid].append(tab)
        live[uid] = tab
        reply = tab.identify({"uid": uid, "ack": ack}, timeout=30)
        assert reply == {"ok": True, "uid": uid}, reply
        return tab

    first = random.Random(7)
    for uid in uids:
        comes_back(uid, first)
    stream = Stream(r, uids)
    publisher = threading.Thread(target=stream.publish, args=(20_000, 4000))
    churned: Counter[str] = Counter()
    lock = threading.Lock()
    failed = threading.Event()

    def churn(mine: list[str], seed: int) -> None:
        """Random drops of `mine` (a goodbye, a FIN, or vanishing) and comebacks."""
        rng = random.Random(seed)
        try:
            while publisher.is_alive() and not failed.is_set():
                uid = rng.choice(mine)
                tab = live.pop(uid, None)
                if tab is not None:
                    if id(tab) in proxied:
                        tab.vanish(proxy)
                        how = "vanished"
                    elif rng.random() < 0.5:
                        tab.close()
                        how = "graceful"
                    else:
                        tab.drop()
                        how = "abrupt"
                    with lock:
                        churned[how] += 1
                if rng.random() < 0.8 or tab is None:
                    comes_back(uid, rng)
                time.sleep(0.01)
        except BaseException:
            failed.set()
            raise

    try:
        publisher.start()
        with ThreadPoolExecutor(4) as pool:  # four churners, each with users of its own
            for churner in [pool.submit(churn, uids[k::4], k) for k in range(4)]:
                churner.result()
        publisher.join()
        # Everyone comes back once more; then all that is owed is received or queued.
        for uid in uids:
            if uid not in live:
                comes_back(uid, first)
        owed = stream.sent

        def all_there():
            got = received_by_uid(tabs_by_uid)
            return sum(len(set(v)) for v in got.values()) >= owed

        try:
            wait_until(all_there, 60, f"{owed} distinct deliveries")
            wait_settled(r)
        except AssertionError:
            pass  # counted below
        counts = account_tabs(stream, tabs_by_uid, r)
        stale = {k.decode(): r.zcard(k) for k in r.scan_iter("rm:inflight:*:*")}
    finally:
        proxy.stop()
    summary(**{k: v for k, v in counts.items() if k != "examples"}, drops=dict(churned), left_in_flight=stale)
    print("churn:", counts, churned, "in flight:", stale, "LOG", server.log_path)
    assert counts["sent"] == 20_000 and counts["lost"] == 0, counts
    assert counts["received"] == 20_000
    assert counts["two_ids"] == 0, "a re-delivery keeps the message's id"
    assert not stale, "nothing left in flight"
    # Late only after a tab vanished (README, "Late after a tab vanishes"): what its
    # server sent it meanwhile comes back once the server notices.
    assert counts["out_of_order"] == counts["late_after_vanished"], counts["examples"].get("out_of_order")
    # Duplicates are only messages not yet acknowledged (README, "Not promised"): sent
    # again after an ack in 1 of 15 runs on 3 December, before the fixes the FIN test
    # below found (test_40_ack_tabs_dropping_by_fin_during_40000_messages).
    assert counts["redelivered_after_ack"] == 0, counts["examples"].get("redelivered_after_ack")
    for tabs in tabs_by_uid.values():
        for tab in tabs:
            tab.close()


@pytest.mark.timeout(300)
def test_40_ack_tabs_dropping_by_fin_during_40000_messages(make_server, r, summary):
    """A tab's acks that reached the server are never in vain: 40 ack-mode users at
    4,000 msg/s, whose tabs drop with a bare FIN, one after another, and come back at
    once. Fewer users than the churn test above, so that each drops every second or so,
    often with messages it has not read (its kernel then resets the connection).

    Counted from the outside: every message received, 0 lost, 0 late, one id each,
    nothing left in flight, and no message sent again after a tab acknowledged it
    (`drop` closes only once the server's kernel has the tab's acks). Before 3 December's
    fixes: 9-42 sent again a run (4 runs), and late in 3 of 4 runs (1-13): a tab that
    came back while the drain of the one before was ending got what the drain held back
    ahead of what it had not sent from the queue yet."""
    server = make_server(log_level="warning", ping_interval=2, ping_timeout=3)
    uids = [f"f{i}" for i in range(40)]
    stream = Stream(r, uids)
    tabs_by_uid, drops = churn_by_fin(lambda _: server.url, uids, lambda: stream.publish(40_000, 4000))
    try:
        wait_until(lambda: sum(map(len, map(set, received_by_uid(tabs_by_uid).values()))) >= stream.sent,
                   60, f"{stream.sent} distinct deliveries")
        wait_settled(r)
    except AssertionError:
        pass  # counted below
    counts = account_tabs(stream, tabs_by_uid, r)
    stale = {k.decode(): r.zcard(k) for k in r.scan_iter("rm:inflight:*:*")}
    summary(**{k: v for k, v in counts.items() if k != "examples"}, drops=drops, left_in_flight=stale)
    print("FIN churn:", counts, f"{drops} drops", "in flight:", stale, "LOG", server.log_path)
    assert counts["lost"] == 0 and counts["received"] == counts["sent"] == 40_000, counts
    assert counts["two_ids"] == 0, "a re-delivery keeps the message's id"
    assert not stale, "nothing left in flight"
    assert counts["redelivered_after_ack"] == 0, counts["examples"].get("redelivered_after_ack")
    assert counts["out_of_order"] == 0, counts["examples"].get("out_of_order")
    for tabs in tabs_by_uid.values():
        for tab in tabs:
            tab.close()


# README, "Not promised": kill -9 loses what the process had read from its subscription
# but not yet written anywhere, and what Redis had sent it that it had not read: the last
# moments before the kill. A message lost that was published longer than this before the
# kill was dropped by the server, not by the kill.
KILL_WINDOW = 1.0


def test_kill_9_during_heavy_delivery_then_restart(make_server, r, summary):
    """A server is killed under a 3,000 msg/s stream to 50 ack-mode clients, then started
    again. Owed is counted from the outside (every PUBLISH answered with a subscriber), not
    from what Redis held after the kill: nothing published after the kill is lost, and
    nothing published before it but in its last moments."""
    server = make_server(log_level="warning")
    uids = [f"k{i}" for i in range(50)]
    tabs = connect_all(server.url, uids)
    stream = Stream(r, uids)
    stop = threading.Event()
    publisher = threading.Thread(target=stream.publish, args=(1_000_000, 3000), kwargs={"stop": stop})
    publisher.start()
    wait_until(lambda: stream.sent >= 3000, 20, "3,000 messages")
    name = names.client_name(server.health()[1]["server"])
    server.kill()
    killed = time.monotonic()
    # Until Redis has seen the dead process's connections close, a PUBLISH still counts
    # it as a subscriber (and writes into its dead socket): that, too, is the kill's.
    wait_until(lambda: all(c.get("name") != name for c in r.client_list()), 5,
               "Redis to drop the dead server", interval=0.002)
    gone = time.monotonic()
    wait_until(lambda: stream.unseen >= 100, 10, "PUBLISHes that no one saw")
    server.start()
    sent_at_restart = stream.sent
    wait_until(lambda: stream.sent >= sent_at_restart + 2000, 20, "2,000 messages after the restart")
    stop.set()
    publisher.join(10)
    first = dict(tabs)
    again = connect_all(server.url, uids)
    tabs_by_uid = {u: [first[u], again[u]] for u in uids}
    owed = {p for ps in stream.owed.values() for p in ps}
    after = {p for p in owed if stream.sent_at[p] > gone}

    def got() -> set[str]:
        return {p for u in uids for t in tabs_by_uid[u] for p in t.payloads()}

    try:
        wait_until(lambda: after <= got(), 60, "the messages published after the kill")
        wait_until(lambda: not any(r.llen(f"rm:users:{u}:messages") for u in uids), 30, "the queues to drain")
        wait_settled(r)
    except AssertionError:
        pass  # counted below
    counts = account_tabs(stream, tabs_by_uid, r)
    queued = {e["payload"] for u in uids for e in queued_envelopes(r, u)}
    lost = sorted(owed - got() - queued, key=stream.sent_at.get)
    before_kill = [round(killed - stream.sent_at[p], 3) for p in lost if stream.sent_at[p] <= gone]
    lost_after = [p for p in lost if stream.sent_at[p] > gone]
    seen_again = min((stream.sent_at[p] for p in after), default=gone)  # the new server's first
    lost_after_s = [round(stream.sent_at[p] - seen_again, 3) for p in lost_after]
    summary(**{k: v for k, v in counts.items() if k != "examples"}, lost_at_kill=len(before_kill),
            lost_after_kill=len(lost_after), oldest_lost_s_before_kill=max(before_kill, default=0),
            redis_dropped_it_s_after_kill=round(gone - killed, 3),
            lost_after_kill_s_after_restart=lost_after_s[:10])
    print("kill -9 under load:", counts, f"lost at the kill: {len(before_kill)}, published "
          f"{min(before_kill, default=0)}-{max(before_kill, default=0)}s before it; after: {len(lost_after)}")
    assert not lost_after, f"{len(lost_after)} published after the kill lost"
    assert max(before_kill, default=0) <= KILL_WINDOW, (
        f"lost {len(before_kill)} published up to {max(before_kill)}s before the kill")
    assert counts["two_ids"] == 0
    for tab in list(first.values()) + list(again.values()):
        tab.close()


def test_killed_subscription_comes_back_by_itself(own_server):
    """Redis drops our subscription (CLIENT KILL): we resubscribe and deliver again."""
    r, server = own_server
    tab = RMClient(server.url).connect()
    assert tab.identify({"uid": "sub", "ack": True})["ok"]
    assert r.client_kill_filter(_type="pubsub") >= 1
    # Until it is back, PUBLISH reaches no one; then the same socket gets messages again.
    wait_until(lambda: r.publish("rm.users.sub", "back") == 1, 10, "the subscription to return")
    assert tab.wait_for(1)[0]["payload"] == "back"
    assert not tab.disconnected.is_set()
    assert server.metric("rm_redis_reconnects_total") == 1
    tab.close()


def test_stuck_redis_turns_healthz_red_within_10_s(own_server):
    """A Redis that answers nothing (CLIENT PAUSE) is noticed: /healthz is 503 within 10 s,
    and /metrics still answers at once."""
    r, server = own_server
    assert server.health()[0] == 200
    r.execute_command("CLIENT", "PAUSE", "12000", "ALL")
    paused = time.monotonic()

    def red():
        try:
            return requests.get(server.url + "/healthz", timeout=10).status_code == 503
        except requests.RequestException:
            return False

    wait_until(red, 10, "/healthz to go red")
    print(f"red {time.monotonic() - paused:.1f}s after Redis stopped answering")
    scrape = time.monotonic()
    assert requests.get(server.url + "/metrics", timeout=10).ok
    assert time.monotonic() - scrape < 1.0, "a scrape does not wait on Redis"
    r.execute_command("CLIENT", "UNPAUSE")
    wait_until(lambda: server.health()[0] == 200, 15, "/healthz to go green again")


def test_redis_out_of_memory_is_counted_and_the_server_goes_on(own_server):
    """Redis refusing writes loses what could not be queued: loudly, and nothing else."""
    r, server = own_server
    tab = RMClient(server.url).connect()
    assert tab.identify("online")["ok"]
    used = int(r.info("memory")["used_memory"])
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", str(used + 200_000))
    for i in range(20):
        r.publish("rm.users.offline", f"{i}:" + "x" * 50_000)  # queueing these fills Redis
    wait_until(lambda: server.metric("rm_messages_failed_total") > 0, 10, "the refused writes to be counted")
    assert "they are lost" in server.log()
    r.config_set("maxmemory", "0")
    r.publish("rm.users.online", "still here")  # a socket that is online needs no write
    assert tab.wait_for(1)[0]["payload"] == "still here"
    print(f"out of memory: {server.metric('rm_messages_failed_total'):.0f} messages counted as lost")
    tab.close()
