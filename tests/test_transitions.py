"""The transitions between states, injected under traffic (issue #10, SPEC §5.10), with three
processes on one Redis and with one where it applies.

Each run publishes a stream to ack-mode users spread over the processes and to users who
stay away, breaks something in the middle, lets it heal, and then counts every message
published while a process was subscribed (PUBLISH returned at least 1), from the outside:
- lost: neither received by a tab of its user nor in the user's queue. Where the fault
  deletes Redis's data (FLUSHALL, a restart without persistence), what was published
  before it may have been deleted with the queues: that is reported, not counted;
- queue duplicates: an id twice in one queue, sampled all through the run;
- delivered and queued: received by a tab and still in the queue at the end;
- late: received after a message published later for the same user;
- left in flight once everything is acknowledged;
- and the processes' views (a digest on /healthz) must end up identical.
A message Redis answered for in the instant it was killed, or the only subscription was
cut, may never have been sent by Redis (docs/cluster.md): reported as `cut_before_sent`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import requests

from tests.support.accounting import Stream, queued_payloads
from tests.support.clients import RMClient
from tests.support.processes import ServerProcess, start_redis, wait_until

pytestmark = pytest.mark.slow

ONLINE = 30
OFFLINE = 10
RATE = 500
BEFORE = 1000  # messages before the fault
AFTER = 1000  # messages once every process is healthy again


@dataclass
class Rig:
    redis: object
    r: redis.Redis
    servers: list[ServerProcess]
    tabs: dict[str, list[RMClient]]
    home: dict[str, int]  # uid -> index of the server its first tab is on
    stream: Stream
    queue_dups: Counter = field(default_factory=Counter)
    # When a connection that may hold messages Redis has not yet written was cut.
    cut: tuple[float, float] = (0.0, 0.0)

    def cutting(self, kill: Callable[[], object]) -> None:
        started = time.monotonic()
        kill()
        self.cut = (started, time.monotonic())

    def ack_tab(self, server: ServerProcess, uid: str) -> RMClient:
        tab = RMClient(server.url).connect()
        assert tab.identify({"uid": uid, "ack": True}) == {"ok": True, "uid": uid}
        return tab

    def alive(self) -> list[ServerProcess]:
        return [s for s in self.servers if s.process is not None and s.process.poll() is None]

    def come_back_elsewhere(self, dead: int) -> None:
        """The tabs on server `dead` notice it is gone; their users reconnect elsewhere."""
        others = [s for i, s in enumerate(self.servers) if i != dead]
        rng = random.Random(dead)
        for uid, i in self.home.items():
            if i == dead:
                assert self.tabs[uid][0].disconnected.wait(15), f"{uid}'s tab did not notice"
                self.tabs[uid].append(self.ack_tab(rng.choice(others), uid))


def server_id(server: ServerProcess) -> str:
    return server.health()[1]["server"]


def kill_subscription(rig: Rig, server: ServerProcess) -> None:
    name = f"rm-server-{server_id(server)}"
    subs = [c for c in rig.r.client_list() if c.get("name") == name and int(c.get("psub", 0)) > 0]
    assert subs, "the server's subscription connection"
    rig.cutting(lambda: [rig.r.client_kill_filter(_id=c["id"]) for c in subs])


def join_one(rig: Rig) -> None:
    """A process starts into the traffic (the owners of offline users change hands), and
    a third of the online users move to it: a goodbye, and once every process has read it,
    a tab there."""
    first = rig.servers[0]
    new = ServerProcess(first.redis_port, first.log_path.parent, log_level="warning").start()
    rig.servers.append(new)
    for uid in list(rig.home)[::3]:
        rig.tabs[uid][-1].close()
        wait_until(lambda uid=uid: not rig.r.exists(f"rm:cluster:users:{uid}"), 10, f"{uid}'s tab gone")
        rig.tabs[uid].append(rig.ack_tab(new, uid))


def restart_one(rig: Rig) -> None:
    """A process stops (SIGTERM) and starts again into the traffic; its users come back to it."""
    server = rig.servers[-1]
    server.stop()
    server.start()
    for uid, i in rig.home.items():
        if i == len(rig.servers) - 1:
            assert rig.tabs[uid][-1].disconnected.wait(15), f"{uid}'s tab did not notice"
            rig.tabs[uid].append(rig.ack_tab(server, uid))


FAULTS: dict[str, Callable[[Rig], None]] = {
    "flushall": lambda rig: rig.r.flushall(),
    "restart_empty": lambda rig: (rig.redis.stop(), rig.redis.start()),
    "restart_aof": lambda rig: (rig.cutting(rig.redis.kill), rig.redis.start()),
    "client_kill_one": lambda rig: kill_subscription(rig, rig.servers[-1]),
    "client_pause": lambda rig: rig.r.execute_command("CLIENT", "PAUSE", "1500", "ALL"),
    "sigterm_one": lambda rig: (rig.servers[1].stop(), rig.come_back_elsewhere(1)),
    "kill9_one": lambda rig: (rig.servers[1].kill(), rig.come_back_elsewhere(1)),
    "kill9_then_flushall": lambda rig: (rig.servers[1].kill(), rig.r.flushall(), rig.come_back_elsewhere(1)),
    "join_one": join_one,
    "restart_one": restart_one,
    "sigstop_past_heartbeat": lambda rig: (
        os.kill(rig.servers[1].process.pid, signal.SIGSTOP), time.sleep(17),
        os.kill(rig.servers[1].process.pid, signal.SIGCONT)),
}
DELETES_DATA = {"flushall", "restart_empty", "kill9_then_flushall"}
# Faults that cut a subscription Redis may still owe messages to, with no other process
# subscribed to have them (Redis is killed, or there is only one process).
CUTS_THE_ONLY_COPY = {("restart_aof", 1), ("restart_aof", 3), ("client_kill_one", 1)}
PERSIST = {"restart_aof"}


def sample_queues(rig: Rig, uids: list[str], stop: threading.Event) -> None:
    """Every 0.2 s, look for an id twice in a queue."""
    while not stop.wait(0.2):
        try:
            pipe = rig.r.pipeline(transaction=False)
            for uid in uids:
                pipe.lrange(f"rm:users:{uid}:messages", 0, -1)
            for uid, raw in zip(uids, pipe.execute(), strict=True):
                ids = Counter(json.loads(item)["id"] for item in raw)
                for msg_id, n in ids.items():
                    if n > 1:
                        rig.queue_dups[(uid, msg_id)] = max(rig.queue_dups[(uid, msg_id)], n - 1)
        except (redis.RedisError, OSError):
            pass  # Redis is down for the fault: sample again later


def in_flight(r: redis.Redis) -> dict[str, set[str]]:
    """uid -> payloads taken for delivery and not yet acknowledged, on any server."""
    out: dict[str, set[str]] = {}
    for key in r.scan_iter("rm:inflight:*:*"):
        uid = key.decode().split(":", 3)[3]
        out.setdefault(uid, set()).update(json.loads(raw)["payload"] for raw in r.zrange(key, 0, -1))
    return out


def views_agree(servers: list[ServerProcess]) -> bool:
    try:
        digests = {s.health()[1]["view"] for s in servers}
    except (requests.RequestException, KeyError):
        return False
    return len(digests) == 1


def run_transition(fault: str, processes: int, tmp_path: Path, logs_dir: Path,
                   via: str = "publish") -> dict[str, object]:
    redis_server = start_redis(tmp_path / "redis", persist=fault in PERSIST,
                               fsync_always=fault in PERSIST)
    r = redis.Redis(port=redis_server.port)
    servers = [ServerProcess(redis_server.port, logs_dir, log_level="warning").start()
               for _ in range(processes)]
    online = [f"{fault}-on{i}" for i in range(ONLINE)]
    offline = [f"{fault}-off{i}" for i in range(OFFLINE)]
    stream = Stream(r, online + offline, via=via)
    rig = Rig(redis_server, r, servers, {}, {}, stream)
    stop = threading.Event()
    threads = [threading.Thread(target=stream.publish, args=(10**9, RATE, stop), daemon=True),
               threading.Thread(target=sample_queues, args=(rig, online + offline, stop), daemon=True)]
    try:
        for i, uid in enumerate(online):
            rig.home[uid] = i % processes
            rig.tabs[uid] = [rig.ack_tab(servers[i % processes], uid)]
        for t in threads:
            t.start()
        wait_until(lambda: stream.sent >= BEFORE, 30, f"{BEFORE} messages before the fault")
        faulted = time.monotonic()
        FAULTS[fault](rig)
        fault_done = time.monotonic()
        wait_until(lambda: all(s.health()[0] == 200 for s in rig.alive()), 40, "every process healthy again")
        healed = stream.sent
        wait_until(lambda: stream.sent >= healed + AFTER, 30, f"{AFTER} messages after the fault")
        stop.set()
        for t in threads:
            t.join(10)
        tabs = [t for ts in rig.tabs.values() for t in ts]

        def received(uid: str) -> list[str]:
            return [p for t in rig.tabs.get(uid, []) for p in t.payloads()]

        # What Redis held until the fault was done is gone with its data, queues included.
        excusable = set()
        if fault in DELETES_DATA:
            excusable = {p for p, at in stream.sent_at.items() if at < fault_done + 0.05}
        elif (fault, processes) in CUTS_THE_ONLY_COPY and via == "publish":
            # Redis answers a PUBLISH before it writes the message to the subscribers, in
            # the same turn of its loop: killed in between, or the subscriber's connection
            # cut, it never sends what it said it had, and no other process has it. Only
            # the last moment before the cut: reported, not counted. Up to 50 ms after it
            # too: no PUBLISH done after the cut can find a subscriber that soon (Redis is
            # dead, or the only process is waiting out its backoff), so one answered 1 was
            # done before it and only timed late by the publisher's thread.
            excusable = {p for p, at in stream.sent_at.items()
                         if rig.cut[0] - 0.005 <= at <= rig.cut[1] + 0.05}

        def missing() -> dict[str, set[str]]:
            """Owed and nowhere: not received, not queued, not taken for delivery (a
            message a drain has just taken is on its way to the tab)."""
            out = {}
            taken = in_flight(r)
            for uid in online + offline:
                have = set(received(uid)) | set(queued_payloads(r, uid)) | taken.get(uid, set())
                out[uid] = {p for p in stream.owed.get(uid, []) if p not in have}
            return out

        try:
            wait_until(lambda: not any(m - excusable for m in missing().values()), 40,
                       "every owed message received, queued or on its way")
        except AssertionError:
            pass  # counted below
        # Online users' queues drain and their tabs acknowledge everything (a drain may
        # still be under way: that is not "both").
        try:
            wait_until(lambda: not any(r.llen(f"rm:users:{uid}:messages") for uid in online)
                       and not in_flight(r), 30, "the online users' queues drained, nothing in flight")
        except AssertionError:
            pass  # counted below, as delivered and queued, in flight, or lost
        gone = missing()
        lost = sum(len(m - excusable) for m in gone.values())
        deleted = sum(len(m & excusable) for m in gone.values())
        both = sum(1 for uid in online + offline for p in set(received(uid)) & set(queued_payloads(r, uid)))
        late = dup = 0
        late_examples: list[tuple[str, str, str]] = []
        for uid in online:
            rank = {p: i for i, p in enumerate(stream.owed.get(uid, []))}
            top = -1
            seen: set[str] = set()
            for p in received(uid):
                if p in seen:
                    dup += 1
                    continue
                seen.add(p)
                i = rank.get(p, -1)
                if i < top:
                    late += 1
                    late_examples.append((uid, p, stream.owed[uid][top]))
                top = max(top, i)
        left_in_flight = sum(map(len, in_flight(r).values()))
        agree = True
        try:
            wait_until(lambda: views_agree(rig.alive()), 15, "the processes' views to agree")
        except AssertionError:
            agree = False
        examples = sorted(((round(stream.sent_at[p] - faulted, 3), uid, p) for uid, m in gone.items()
                           for p in m - excusable))[:6]
        counts = {"fault": fault, "processes": processes, "via": via, "owed": stream.sent, "lost": lost,
                  "lost_examples": examples,
                  "deleted_by_the_fault" if fault in DELETES_DATA else "cut_before_sent": deleted,
                  "queue_duplicates": sum(rig.queue_dups.values()),
                  "delivered_and_queued": both, "late": late, "duplicates_received": dup,
                  "in_flight": left_in_flight, "views_agree": agree, "unseen": stream.unseen,
                  "late_examples": late_examples[:4], "fault_s": round(fault_done - faulted, 2),
                  "queue_duplicate_examples": sorted(rig.queue_dups)[:4]}
        print(f"transition {counts}")
        for t in tabs:
            t.close()
        return counts
    finally:
        stop.set()
        for ts in rig.tabs.values():
            for t in ts:
                t.close()
        for s in servers:
            if s.process is not None and s.process.poll() is None:
                try:
                    os.kill(s.process.pid, signal.SIGCONT)
                except OSError:
                    pass
            s.stop()
        redis_server.stop()


# Faults after which users reconnect to another process: README's "late after a
# reconnect" may happen there (a newer message before one the gone process held). Not
# after a plain `kill -9`: a tab that joined waits for the dead process's work to be
# redone, and its drain sends that first (0 late in 15 of 15 runs on 3 December; 5-12
# in 10 of 18 runs in CI before).
RECONNECT_ELSEWHERE = {"sigterm_one", "kill9_then_flushall"}
# README, "late after a Redis restart": with 3 processes, rarely one message late. A
# drain that sent what was queued past the events its process had read caused 1 late in
# 4 of 45 runs on 3 December; since that is fixed, 2 of 126 runs failed (the one examined
# with 1 late), cause not found yet.
LATE_AFTER_A_REDIS_RESTART = {"restart_empty"}


def check(counts: dict[str, object]) -> None:
    assert counts["lost"] == 0, counts
    assert counts["queue_duplicates"] == 0, counts
    assert counts["delivered_and_queued"] == 0, counts
    assert counts["in_flight"] == 0, counts
    assert counts["views_agree"], counts
    if counts["late"] and counts["fault"] in RECONNECT_ELSEWHERE:
        pytest.xfail(f"issue #10, late after a reconnect elsewhere: {counts['late']}: "
                     f"{counts['late_examples']}")
    if counts["late"] and counts["fault"] in LATE_AFTER_A_REDIS_RESTART and counts["processes"] > 1:
        pytest.xfail(f"issue #10, late after a Redis restart: {counts['late']}: {counts['late_examples']}")
    assert counts["late"] == 0, counts


THREE = ["flushall", "restart_empty", "restart_aof", "client_kill_one", "client_pause",
         "sigterm_one", "kill9_one", "kill9_then_flushall", "join_one", "restart_one"]
ONE = ["flushall", "restart_empty", "restart_aof", "client_pause", "client_kill_one", "join_one",
       "restart_one"]


@pytest.mark.parametrize("run", range(3))
@pytest.mark.parametrize("fault", THREE)
def test_three_processes(fault: str, run: int, tmp_path: Path, logs_dir: Path, summary) -> None:
    check(summary(**run_transition(fault, 3, tmp_path, logs_dir)))


@pytest.mark.parametrize("fault", ONE)
def test_one_process(fault: str, tmp_path: Path, logs_dir: Path, summary) -> None:
    check(summary(**run_transition(fault, 1, tmp_path, logs_dir)))


# The inbox keeps what no process has routed yet (SPEC §9): the same faults, with every
# message added to it instead of PUBLISHed, and every one owed, also those a cut
# subscription was never sent.
INBOX = ["client_kill_one", "client_pause", "kill9_one", "sigterm_one", "restart_aof", "join_one",
         "restart_one"]


@pytest.mark.parametrize("fault", INBOX)
def test_three_processes_inbox(fault: str, tmp_path: Path, logs_dir: Path, summary) -> None:
    check(summary(**run_transition(fault, 3, tmp_path, logs_dir, via="inbox")))


@pytest.mark.parametrize("fault", ["client_kill_one", "restart_aof"])
def test_one_process_inbox(fault: str, tmp_path: Path, logs_dir: Path, summary) -> None:
    check(summary(**run_transition(fault, 1, tmp_path, logs_dir, via="inbox")))


def test_three_processes_inbox_one_paused_past_its_heartbeat(tmp_path: Path, logs_dir: Path, summary) -> None:
    check(summary(**run_transition("sigstop_past_heartbeat", 3, tmp_path, logs_dir, via="inbox")))


def test_three_processes_one_paused_past_its_heartbeat(tmp_path: Path, logs_dir: Path, summary) -> None:
    check(summary(**run_transition("sigstop_past_heartbeat", 3, tmp_path, logs_dir)))
