"""A client that stops reading must not delay the others, and is cut off (issue 3).

One raw WebSocket client identifies as `slow` and then never reads again, beside 100
python-socketio clients that do. The same stream (small timestamped messages to the 100,
interleaved with 20 KB messages to `slow`) is published twice: once without the slow
client connected, once with it. The others' publish-to-receive latency must not suffer,
the slow socket must be closed once `max_buffered` packets wait for it, and every message
published to it must be back in its queue.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
import websocket

from tests.support.clients import RMClient
from tests.support.processes import wait_until

pytestmark = pytest.mark.slow

OTHERS = 100
SMALL = 2000  # small messages per run, round robin over the others
BIG_EVERY = 4  # one 20 KB message to `slow` after every 4th small one
BIG_SIZE = 20 * 1024
# Small messages a second. At 500, a machine held to one core was ~85% busy before any
# slow client joined, and at that edge any extra work doubles a p99 (a tab that reads the
# same big messages: 2.5 -> 4.3-8.6 ms): the test then measured saturation, not the slow
# client. At 250, on one core, 5 of 6 pairs had ratios of 0.85-1.17.
RATE = 250
MAX_BUFFERED = 100
FLOOR = 0.005  # seconds: see test docstring
PAIRS = 3


class TimedClient(RMClient):
    """Records when each message arrived, by the test process's clock."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.arrivals: list[tuple[str, float]] = []

    def _on_message(self, envelope: dict[str, Any]) -> None:
        self.arrivals.append((envelope["payload"], time.perf_counter()))
        super()._on_message(envelope)



def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def run_stream(r, tabs: list[TimedClient], tag: str, big_to: str) -> tuple[list[float], list[str]]:
    """Publish the stream; return the others' latencies and the big payloads `big_to` was owed."""
    sent_at: dict[str, float] = {}
    big_owed: list[str] = []
    filler = "x" * BIG_SIZE
    started = time.perf_counter()
    for n in range(SMALL):
        payload = f"{tag}{n}"
        sent_at[payload] = time.perf_counter()
        assert r.publish(f"rm.users.n{n % OTHERS}", payload) == 1
        if n % BIG_EVERY == 0:
            big = f"{tag}big{n}:{filler}"
            if r.publish(f"rm.users.{big_to}", big) == 1:
                big_owed.append(big)
        ahead = started + (n + 1) / RATE - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
    per_tab = SMALL // OTHERS

    def arrived() -> bool:
        return all(sum(1 for p, _ in t.arrivals if p.startswith(tag)) >= per_tab for t in tabs)

    wait_until(arrived, 30, f"the {SMALL} small messages of run {tag}")
    latencies = [at - sent_at[p] for t in tabs for p, at in t.arrivals if p in sent_at]
    assert len(latencies) == SMALL, "each small message arrived once"
    for i, tab in enumerate(tabs):
        mine = [p for p, _ in tab.arrivals if p.startswith(tag)]
        assert mine == [f"{tag}{n}" for n in range(i, SMALL, OTHERS)], "in order, none lost"
    return latencies, big_owed


def never_reading_client(url: str, uid: str) -> websocket.WebSocket:
    """Upgrade to WebSocket, join /rm, identify in ack mode, then read nothing more.

    Its receive buffer is made small so that the server's writes back up sooner.
    """
    ws = websocket.create_connection(
        url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket", timeout=10,
        sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),),
    )
    assert ws.recv().startswith("0{")
    ws.send("40/rm,")
    ws.send("42/rm,1" + json.dumps(["identifier", {"uid": uid, "ack": True}]))
    while True:
        frame = ws.recv()
        if frame.startswith("43/rm,1"):
            assert json.loads(frame[len("43/rm,1"):]) == [{"ok": True, "uid": uid}]
            return ws


def read_rest(ws: websocket.WebSocket, timeout: float) -> tuple[int, bool]:
    """Read what the server had written: (messages it held, whether it was told to go)."""
    messages, told = 0, False
    ws.settimeout(timeout)
    try:
        while not told:
            frame = ws.recv()
            if not frame:
                break
            if frame.startswith("42/rm,") and '["message"' in frame[:20]:
                messages += 1
            told = frame.startswith("41/rm")
    except (websocket.WebSocketException, OSError):
        pass
    return messages, told


def test_a_client_that_never_reads_does_not_slow_the_others(make_server, r, summary):
    """The others' p99 latency with the slow client stays within 2x of the run without it.

    A floor of 5 ms applies to the run without it: on a shared 2-core machine a p99 of
    1-2 ms doubles from scheduling noise alone, so `p99_with <= 2 * max(p99_without, 5 ms)`.
    The pair of runs (without, then with a new slow client) is done PAIRS times and the
    median pair is judged: one pair can be spoiled by another process on the machine (CI
    once saw 7 ms then 14.5 ms), and what the slow client costs shows in every pair.
    Every pair must still lose nothing and close its slow socket.
    """
    server = make_server(max_buffered=MAX_BUFFERED, log_level="warning")
    tabs = []
    for i in range(OTHERS):
        tab = TimedClient(server.url).connect()
        assert tab.identify({"uid": f"n{i}", "ack": True}) == {"ok": True, "uid": f"n{i}"}
        tabs.append(tab)
    run_stream(r, tabs, "w", "nobody")  # warm-up, not measured

    pairs = []
    for k in range(PAIRS):
        uid = f"slow{k}"
        without, _ = run_stream(r, tabs, f"a{k}.", uid)
        r.delete(f"rm:users:{uid}:messages")  # run A queued those: nobody was there

        slow = never_reading_client(server.url, uid)
        wait_until(lambda: server.health()[1]["connections"] == OTHERS + 1, 5,
                   "the slow client to be counted")
        with_slow, owed = run_stream(r, tabs, f"b{k}.", uid)

        # Cut off: counted, gone from the server's sockets, and nothing of its held in flight.
        wait_until(lambda k=k: server.metric("rm_sockets_slow_closed_total") > k, 10,
                   "the slow socket to be closed")
        wait_until(lambda: server.health()[1]["connections"] == OTHERS, 10, "the slow socket to be gone")
        wait_until(lambda uid=uid: not list(r.scan_iter(f"rm:inflight:*:{uid}")), 10,
                   "no message of slow in flight")
        queued = [json.loads(m)["payload"] for m in r.lrange(f"rm:users:{uid}:messages", 0, -1)]
        written, told = read_rest(slow, 5)
        slow.close()
        lost = len([p for p in owed if p not in set(queued)])
        figures = {
            "sent_to_slow": len(owed), "queued_for_slow": len(queued), "written_to_slow_unacked": written,
            "lost": lost, "sent_to_others": 2 * SMALL, "delivered_to_others": len(without) + len(with_slow),
            "p99_without_ms": round(p99(without) * 1000, 2), "p99_with_ms": round(p99(with_slow) * 1000, 2),
            "max_without_ms": round(max(without) * 1000, 2), "max_with_ms": round(max(with_slow) * 1000, 2),
        }
        print(f"slow client, pair {k}:", figures)
        assert queued == owed, "every message for slow is back in its queue, in order, once"
        assert lost == 0 and len(owed) == SMALL // BIG_EVERY
        assert told, "the slow socket was told to disconnect, behind what it had not read"
        pairs.append((p99(with_slow) / max(p99(without), FLOOR), figures))

    pairs.sort(key=lambda pair: pair[0])
    ratio, median = pairs[len(pairs) // 2]
    summary(**median, ratios=[round(q, 2) for q, _ in pairs],
            slow_closed=server.metric("rm_sockets_slow_closed_total"))
    assert ratio <= 2, [figures for _, figures in pairs]
    for tab in tabs:
        assert not tab.disconnected.is_set()
        tab.close()


def test_a_slow_client_beside_its_own_fast_tab_loses_nothing(make_server, r):
    """The same user on a reading tab and a tab that never reads: the stuck tab is closed,
    and every message reaches the reading tab (acknowledged) or is still queued for it."""
    server = make_server(max_buffered=MAX_BUFFERED, log_level="warning")
    fast = RMClient(server.url).connect()
    assert fast.identify({"uid": "both", "ack": True}) == {"ok": True, "uid": "both"}
    slow = never_reading_client(server.url, "both")
    filler = "y" * BIG_SIZE
    sent = [f"m{n}:{filler}" for n in range(600)]
    started = time.perf_counter()
    for n, payload in enumerate(sent):
        assert r.publish("rm.users.both", payload) == 1
        ahead = started + (n + 1) / 300 - time.perf_counter()  # 6 MB/s: the reading tab keeps up
        if ahead > 0:
            time.sleep(ahead)
    wait_until(lambda: server.metric("rm_sockets_slow_closed_total") >= 1, 20,
               "the stuck tab to be closed")

    def accounted() -> bool:
        queued = r.lrange("rm:users:both:messages", 0, -1)
        got = set(fast.payloads()) | {json.loads(m)["payload"] for m in queued}
        return got >= set(sent)

    wait_until(accounted, 30, "every message received by the reading tab or queued")
    slow.close()
    received = fast.payloads()
    print(f"slow tab beside a fast one: sent {len(sent)}, received {len(set(received))} "
          f"({len(received) - len(set(received))} duplicated), "
          f"queued {r.llen('rm:users:both:messages')}")
    firsts = list(dict.fromkeys(received))
    assert firsts == sent[: len(firsts)], "in order"
    assert not fast.disconnected.is_set()
    fast.close()


def test_a_burst_to_a_reading_client_is_not_taken_for_a_slow_one(make_server, r):
    """300 small messages in one burst to a client that reads, beside a bystander: the
    client is not cut off, and nothing of the burst, nor of the bystander's, is lost."""
    server = make_server(max_buffered=MAX_BUFFERED, log_level="warning")
    tab = RMClient(server.url).connect()
    assert tab.identify({"uid": "burst", "ack": True}) == {"ok": True, "uid": "burst"}
    bystander = RMClient(server.url).connect()
    assert bystander.identify({"uid": "bystander", "ack": True}) == {"ok": True, "uid": "bystander"}
    pipe = r.pipeline(transaction=False)
    for n in range(300):
        pipe.publish("rm.users.burst", f"b{n}")
        pipe.publish("rm.users.bystander", f"o{n}")
    assert pipe.execute() == [1] * 600

    def figures() -> dict[str, int]:
        queued = {json.loads(m)["payload"] for m in r.lrange("rm:users:burst:messages", 0, -1)}
        got = set(tab.payloads())
        return {"sent": 300, "received": len(got), "queued": len(queued - got),
                "lost": 300 - len(got | queued), "bystander_received": len(bystander.messages),
                "slow_closed": int(server.metric("rm_sockets_slow_closed_total")),
                "left_in_flight": sum(r.zcard(k) for k in r.scan_iter("rm:inflight:*:*"))}

    try:
        wait_until(lambda: figures()["lost"] == 0 and len(bystander.messages) == 300, 15,
                   "every message of the burst received or queued, and the bystander's 300")
    finally:
        print("burst to a reading client:", figures())
    assert not tab.disconnected.is_set() and figures()["slow_closed"] == 0
    assert tab.payloads() == [f"b{n}" for n in range(300)]
    assert bystander.payloads() == [f"o{n}" for n in range(300)]
    tab.close()
    bystander.close()


def test_half_open_connection_is_noticed_and_its_messages_given_back(make_server, r):
    """A client that vanishes without a FIN (it reads, but answers no ping and no message)
    is closed after ping_interval + ping_timeout, and what it held goes back in order."""
    server = make_server(ping_interval=1, ping_timeout=1, log_level="warning")
    ws = websocket.create_connection(
        server.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket", timeout=10)
    assert ws.recv().startswith("0{")
    ws.send("40/rm,")
    ws.send("42/rm,1" + json.dumps(["identifier", {"uid": "ghost", "ack": True}]))
    payloads = [f"g{i}" for i in range(20)]
    for p in payloads:
        r.publish("rm.users.ghost", p)
    got, closed = [], False
    ws.settimeout(10)
    started = time.monotonic()
    try:
        while not closed:
            frame = ws.recv()  # reads everything, answers nothing: pings "2" go unanswered
            if not frame or frame.startswith("1"):
                closed = True
            elif frame.startswith("42/rm,") and '"message"' in frame:
                got.append(json.loads(frame[frame.index("["):])[1]["payload"])
    except (websocket.WebSocketException, OSError):
        closed = True
    waited = time.monotonic() - started
    ws.close()
    assert got == payloads, "it was sent everything before it went quiet"
    assert closed and waited < 8, f"closed after {waited:.1f}s"
    wait_until(lambda: r.llen("rm:users:ghost:messages") == 20, 10, "its 20 messages back in its queue")
    assert [json.loads(m)["payload"] for m in r.lrange("rm:users:ghost:messages", 0, -1)] == payloads
    print(f"half-open: closed after {waited:.1f}s, 20 sent, 20 back in the queue, 0 lost")


def test_a_tab_whose_network_vanishes_is_noticed_by_its_pings_alone(make_server, proxy_to, r, uid, summary):
    """Through a proxy that stops forwarding (no FIN, no RST): the server cannot tell at
    once, as it can for a closed socket; it closes the socket once its pings go
    unanswered (ping_interval + ping_timeout), and gives back what was not acknowledged."""
    server = make_server(ping_interval=1, ping_timeout=1, log_level="warning")
    proxy = proxy_to(server)
    try:
        control = RMClient(server.url).connect()
        assert control.identify({"uid": f"{uid}-closed", "ack": True})["ok"]
        tab = RMClient(proxy.url, auto_ack=False).connect()
        assert tab.identify({"uid": uid, "ack": True}) == {"ok": True, "uid": uid}
        payloads = [f"v{i}" for i in range(20)]
        for p in payloads:
            r.publish(f"rm.users.{uid}", p)
        tab.wait_for(20)
        connections = lambda: server.health()[1]["connections"]  # noqa: E731
        assert connections() == 2

        control.drop()  # a clean TCP close: seen at once
        dropped = time.monotonic()
        wait_until(lambda: connections() == 1, 5, "the closed socket to be noticed")
        closed_noticed = time.monotonic() - dropped

        tab.vanish(proxy)
        vanished = time.monotonic()
        time.sleep(0.3)
        still_there = connections()  # nothing told the server
        wait_until(lambda: connections() == 0, 10, "the vanished socket to be noticed")
        vanish_noticed = time.monotonic() - vanished
        key = f"rm:users:{uid}:messages"
        wait_until(lambda: r.llen(key) == 20, 10, "its 20 unacknowledged messages back in its queue")
        back = [json.loads(m)["payload"] for m in r.lrange(key, 0, -1)]
    finally:
        proxy.stop()
    print(f"vanished without a FIN: noticed after {vanish_noticed:.2f}s (a closed socket after "
          f"{closed_noticed:.2f}s); 20 held, {len(back)} back in the queue, in order: {back == payloads}")
    summary(sent=20, held_unacknowledged=20, queued=len(back), lost=len(set(payloads) - set(back)),
            duplicated=len(back) - len(set(back)), out_of_order=int(back != payloads[:len(back)]),
            noticed_after_s=round(vanish_noticed, 2), closed_socket_noticed_after_s=round(closed_noticed, 2))
    assert still_there == 1, "the proxy let the server see the tab go"
    assert closed_noticed < 1
    assert 0.5 <= vanish_noticed < 2 * (1 + 1) + 1, "noticed by ping_interval + ping_timeout"
    assert back == payloads
