"""Count every message of a stream: sent, received, still queued, lost, duplicated."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import redis

import rm_flask


@dataclass
class Stream:
    """Publishes `seq:uid` payloads to users, remembering which ones a server received.

    PUBLISH returns how many subscribers got the message; only those with at least one
    are owed (SPEC §5: what is published while no server listens is not seen). With
    `via="inbox"` every payload is added to the inbox instead, and every one is owed
    (SPEC §9).
    """

    r: redis.Redis
    uids: list[str]
    owed: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    sent_at: dict[str, float] = field(default_factory=dict)  # payload -> when PUBLISH returned
    unseen: int = 0
    failed: int = 0
    via: str = "publish"
    _seq: int = 0

    def publish(self, count: int, rate: float | None = None, stop: threading.Event | None = None) -> None:
        started = time.monotonic()
        for n in range(count):
            if stop is not None and stop.is_set():
                return
            uid = random.choice(self.uids)
            self._seq += 1
            payload = f"{self._seq}:{uid}"
            try:
                if self.via == "inbox":
                    rm_flask.publish(self.r, f"rm.users.{uid}", payload)
                    self.owed[uid].append(payload)
                    self.sent_at[payload] = time.monotonic()
                elif self.r.publish(f"rm.users.{uid}", payload) > 0:
                    self.owed[uid].append(payload)
                    self.sent_at[payload] = time.monotonic()
                else:
                    self.unseen += 1
            except redis.RedisError:
                self.failed += 1
            if rate:
                ahead = started + (n + 1) / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)

    @property
    def sent(self) -> int:
        return sum(len(v) for v in self.owed.values())


def queued_payloads(r: redis.Redis, uid: str) -> list[str]:
    return [json.loads(raw)["payload"] for raw in r.lrange(f"rm:users:{uid}:messages", 0, -1)]


def in_flight_count(r: redis.Redis, uid: str) -> int:
    """`uid`'s messages taken for delivery and not yet acknowledged, on any server."""
    return sum(r.zcard(key) for key in r.scan_iter(f"rm:inflight:*:{uid}"))


def account(stream: Stream, received: dict[str, list[str]], r: redis.Redis) -> dict[str, Any]:
    """Each owed message is received or queued; lost must be 0. Order is checked per uid."""
    totals = Counter()
    out_of_order = 0
    examples: list[tuple[str, str, str]] = []
    for uid in stream.uids:
        owed = stream.owed.get(uid, [])
        got = received.get(uid, [])
        queued = queued_payloads(r, uid)
        seen = Counter(got) + Counter(queued)
        totals["sent"] += len(owed)
        totals["received"] += len(set(got))
        totals["queued"] += len(queued)
        totals["lost"] += sum(1 for p in owed if seen[p] == 0)
        totals["duplicated"] += sum(n - 1 for n in seen.values() if n > 1)
        first_seen = list(dict.fromkeys(got))
        positions = {p: i for i, p in enumerate(owed)}
        ranks = [positions[p] for p in first_seen if p in positions]
        for a, b in zip(ranks, ranks[1:], strict=False):
            if b < a:
                out_of_order += 1
                examples.append((uid, owed[a], owed[b]))
    totals["out_of_order"] = out_of_order
    if examples:
        totals["out_of_order_examples"] = examples[:5]
    totals["unseen_by_server"] = stream.unseen
    totals["publish_failed"] = stream.failed
    return dict(totals)


def queued_envelopes(r: redis.Redis, uid: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in r.lrange(f"rm:users:{uid}:messages", 0, -1)]


def arrivals(tabs: list[Any]) -> list[tuple[float, str, str, int]]:
    """Every copy the user's tabs got: (when, payload, id, tab index), in arrival order."""
    got = []
    for i, tab in enumerate(tabs):
        got += [(at, m.get("payload"), m.get("id"), i) for at, m in tab.received()]
    return sorted(got)


def late(first_arrivals: list[str], owed: list[str]) -> list[str]:
    """The messages that came after one published later to the same user. (Not the
    descents between neighbours: a block of 20 arriving late counts 20, not 1.)"""
    rank = {p: i for i, p in enumerate(owed)}
    newest = -1
    found = []
    for p in first_arrivals:
        if p not in rank:
            continue
        if rank[p] < newest:
            found.append(p)
        newest = max(newest, rank[p])
    return found


def _acked_then_again(tabs: list[Any], acked: tuple[float, int], at: float, again_on: int) -> str:
    when, by = acked
    return (f"tab {by} ({tabs[by].ended or 'open'}) acked it, "
            f"tab {again_on} got it again {at - when:.3f}s later")


# How long after a tab vanished its server may still send to it: the churn tests ping
# every 2 s and wait 3 more; slack for a machine this busy. A second before it, too:
# what was written just before the cut never got past the proxy.
VANISH_NOTICED_WITHIN = 10.0


def _while_a_tab_vanished(tabs: list[Any], published: float | None) -> bool:
    return published is not None and any(
        t.vanished_at is not None and t.vanished_at - 1 <= published <= t.vanished_at + VANISH_NOTICED_WITHIN
        for t in tabs)


def account_tabs(stream: Stream, tabs_by_uid: dict[str, list[Any]], r: redis.Redis) -> dict[str, Any]:
    """Every owed message, counted from the outside: what each PUBLISH was owed (its
    subscriber count), what each tab got (payload, id, when), what Redis holds.

    - lost: owed, and neither received by a tab nor in the user's queue;
    - duplicated: copies beyond the first, received or queued;
    - out_of_order: messages that came after one published later (`late`), tab after tab;
      late_after_vanished: those of them first received on the tab after one that vanished;
    - two_ids: messages that reached the user (or its queue) under more than one id;
    - redelivered_after_ack: copies that arrived after one of the user's tabs had
      acknowledged that message and then closed with a FIN or stayed connected (its ack
      reached the server for sure; a tab that vanished, its acks may not have).
    """
    totals: Counter[str] = Counter()
    examples: dict[str, list[Any]] = defaultdict(list)
    for uid in stream.uids:
        owed = stream.owed.get(uid, [])
        tabs = tabs_by_uid.get(uid, [])
        got = arrivals(tabs)
        queue = queued_envelopes(r, uid)
        copies = Counter(p for _, p, _, _ in got) + Counter(e.get("payload") for e in queue)
        # The order the user saw: tab after tab, in the order the tabs were opened, each
        # message where it first came. (Not merged by arrival time: while an old tab
        # closes and a new one opens, both get live messages, and which of the two the
        # test's threads handled first says nothing about the server.)
        firsts = list(dict.fromkeys(p for tab in tabs for p in tab.payloads()))
        totals["sent"] += len(owed)
        totals["received"] += len(firsts)
        totals["queued"] += len(queue)
        lost = [p for p in owed if copies[p] == 0]
        totals["lost"] += len(lost)
        examples["lost"] += [(uid, p) for p in lost[:3]]
        totals["duplicated"] += sum(n - 1 for n in copies.values() if n > 1)
        behind = late(firsts, owed)
        totals["out_of_order"] += len(behind)
        where = {}
        for n, tab in enumerate(tabs):
            for p in tab.payloads():
                where.setdefault(p, n)
        # Late because an earlier tab vanished while it was published: what that tab's
        # server sent it meanwhile came back only once the server noticed (README, "Late
        # after a tab vanishes").
        totals["late_after_vanished"] += sum(
            1 for p in behind if _while_a_tab_vanished(tabs[:where[p]], stream.sent_at.get(p)))
        examples["out_of_order"] += [
            (uid, p, f"first on tab {where[p]}, after tab {where[p] - 1} "
                     f"{tabs[where[p] - 1].ended if where[p] else 'none'}") for p in behind[:3]]
        ids: dict[str, set[str]] = defaultdict(set)
        for _, p, i, _ in got:
            ids[p].add(i)
        for e in queue:
            ids[e.get("payload")].add(e.get("id"))
        totals["two_ids"] += sum(1 for v in ids.values() if len(v) > 1)
        acked: dict[str, tuple[float, int]] = {}  # id -> (when, by which tab)
        for n, tab in enumerate(tabs):
            if tab.ended in (None, "closed", "dropped"):
                for i, at in list(tab.acked_ids.items()):
                    if i not in acked or at < acked[i][0]:
                        acked[i] = (at, n)
        again = [(p, _acked_then_again(tabs, acked[i], at, k)) for at, p, i, k in got
                 if i in acked and at > acked[i][0]]
        again += [(e.get("payload"), f"acked by tab {acked[e['id']][1]}, back in the queue")
                  for e in queue if e.get("id") in acked]
        totals["redelivered_after_ack"] += len(again)
        examples["redelivered_after_ack"] += [(uid, *a) for a in again[:3]]
    counts: dict[str, Any] = dict(totals)
    counts["unseen_by_server"] = stream.unseen
    counts["publish_failed"] = stream.failed
    counts["examples"] = {k: v[:5] for k, v in examples.items() if v}
    return counts


def _seq(payload: Any) -> int | None:
    """The publish order of a stream's payload (`seq:uid`, `seq:g:cid`); None for others."""
    head = str(payload).split(":", 1)[0]
    return int(head) if head.isdigit() else None


class QueueSampler:
    """Reads every user's queue over and over while a test runs, so that "no queue ever
    held a message twice" and "queues in order" are checked throughout, not at one moment.

    A queue holds a message twice if an id, or a payload (each PUBLISH's is unique), is in
    it more than once; it is out of order if a stream payload stands after a later one.
    """

    def __init__(self, r: redis.Redis, uids: list[str], interval: float = 0.2) -> None:
        self.r, self.uids, self.interval = r, uids, interval
        self.samples = 0
        self.entries = 0  # queue entries read, over all samples
        self.twice: list[tuple[str, int]] = []  # (uid, sample) of each queue seen holding a message twice
        self.disordered: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="queue-sampler", daemon=True)

    def __enter__(self) -> QueueSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)

    def sample(self) -> None:
        pipe = self.r.pipeline(transaction=False)
        for uid in self.uids:
            pipe.lrange(f"rm:users:{uid}:messages", 0, -1)
        self.samples += 1
        for uid, raws in zip(self.uids, pipe.execute(), strict=True):
            if not raws:
                continue
            self.entries += len(raws)
            queue = []
            for raw in raws:
                try:
                    queue.append(json.loads(raw))
                except ValueError:
                    queue.append({"payload": raw})
            ids = [e.get("id") for e in queue]
            payloads = [e.get("payload") for e in queue]
            if len(set(ids)) < len(ids) or len(set(payloads)) < len(payloads):
                self.twice.append((uid, self.samples))
            seqs = [s for s in map(_seq, payloads) if s is not None]
            if seqs != sorted(seqs):
                self.disordered.append((uid, self.samples))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except redis.RedisError:
                pass  # a test that breaks Redis on purpose: sample again once it is back

    def figures(self) -> dict[str, Any]:
        return {"queue_samples": self.samples, "queue_entries_read": self.entries,
                "queues_holding_a_message_twice": len(self.twice),
                "queues_out_of_order": len(self.disordered)}
