"""The Lua scripts of `store` against a real redis-server: each move is one step."""

from __future__ import annotations

import json

import pytest

from rm_flask.store import Store


@pytest.fixture
def store(r):
    return Store(r, "srv1", queue_expiry=100, max_queue_length=5)


def payloads(items):
    return [json.loads(i)["p"] for i in items]


def item(n):
    return json.dumps({"p": n})


def test_append_sets_ttl_and_cuts_the_oldest(store, r):
    for n in range(7):
        cut = store.append("u", item(n))
    assert payloads(cut) == [1]
    assert payloads(r.lrange("rm:users:u:messages", 0, -1)) == [2, 3, 4, 5, 6]
    assert 0 < r.ttl("rm:users:u:messages") <= 100


def test_claim_moves_to_in_flight_and_recommit_restores_order(store, r):
    for n in range(5):
        store.append("u", item(n))
    _, batch = store.claim("u", 3)
    assert payloads(batch) == [0, 1, 2]
    assert payloads(r.lrange("rm:users:u:messages", 0, -1)) == [3, 4]
    assert payloads(r.zrange("rm:inflight:srv1:u", 0, -1)) == [0, 1, 2]
    assert r.smembers("rm:inflight:srv1") == {b"u"}
    store.append("u", item(5))
    store.settle("u", [batch[0]])
    store.recommit("u", batch[1:])
    assert payloads(r.lrange("rm:users:u:messages", 0, -1)) == [1, 2, 3, 4, 5]
    assert not r.exists("rm:inflight:srv1:u") and not r.exists("rm:inflight:srv1")


def env(seq, n, era="e1"):
    """A stored envelope whose id places it in the sequence: event `seq`, message `n`."""
    return json.dumps({"id": f"{era}.{seq:x}.{n:x}", "p": f"{seq}.{n}"}, separators=(",", ":"))


def ids(r, uid):
    return [json.loads(i)["id"] for i in r.lrange(f"rm:users:{uid}:messages", 0, -1)]


def test_a_late_append_takes_its_place_in_the_sequence(r):
    store = Store(r, "srv1", queue_expiry=100, max_queue_length=100)
    for seq, n in [(1, 1), (1, 3), (2, 1)]:
        store.append("u", env(seq, n))
    store.append("u", env(1, 2))  # from a server that read the sequence a little later
    store.append("u", env(0, 9))
    store.append("u", env(1, 1, era="e0"))  # from before Redis lost its data: at the end
    assert ids(r, "u") == ["e1.0.9", "e1.1.1", "e1.1.2", "e1.1.3", "e1.2.1", "e0.1.1"]


def test_a_give_back_goes_before_newer_and_after_older_queued_messages(r):
    store = Store(r, "srv1", queue_expiry=100, max_queue_length=100)
    for seq in (2, 5, 9):
        store.append("u", env(seq, 1))
    store.recommit("u", [env(1, 1), env(3, 1), env(4, 1), env(7, 1)])
    assert ids(r, "u") == ["e1.1.1", "e1.2.1", "e1.3.1", "e1.4.1", "e1.5.1", "e1.7.1", "e1.9.1"]


def inbox_env(ms, n=0):
    """A stored inbox message: its id names its stream entry, not a place."""
    return json.dumps({"id": f"i-{ms}-{n}", "p": f"{ms}-{n}"}, separators=(",", ":"))


def test_inbox_messages_are_appended_and_given_back_in_the_streams_order(r):
    """Their ids name no place in the sequence, but their entries stand in the stream's
    order: a give-back goes behind older entries queued since (a redo put them there),
    and a late append takes its place among them, each id once."""
    store = Store(r, "srv1", queue_expiry=100, max_queue_length=100)
    for ms in (1000, 3000, 9000):
        store.append("u", inbox_env(ms))
    store.append("u", inbox_env(2000, 1))
    store.append("u", inbox_env(3000))  # forwarded again: there already
    store.recommit("u", [inbox_env(2000, 0), inbox_env(5000), inbox_env(10000)])
    assert ids(r, "u") == ["i-1000-0", "i-2000-0", "i-2000-1", "i-3000-0", "i-5000-0", "i-9000-0",
                           "i-10000-0"]


def test_claim_stops_at_the_end_of_a_drain(r):
    store = Store(r, "srv1", queue_expiry=100, max_queue_length=100)
    for seq in (3, 4, 5, 6):
        store.append("u", env(seq, 1))
    assert [json.loads(i)["id"] for i in store.claim("u", 10, before=5, era="e1")[1]] == ["e1.3.1", "e1.4.1"]
    assert ids(r, "u") == ["e1.5.1", "e1.6.1"]


def test_recover_merges_a_dead_servers_work_in_order_each_id_once(r):
    dead = Store(r, "dead", queue_expiry=100, max_queue_length=100)
    for seq in (1, 2, 3):
        dead.append("a", env(seq, 1))
    dead.claim("a", 2)  # 1 and 2 in flight on the dead server
    dead.append("a", env(7, 1))  # queued since by another server
    survivor = Store(r, "alive", queue_expiry=100, max_queue_length=100)
    # Read since its checkpoint: 2 (in flight too) and 5, 6 (it never handled them).
    given = survivor.recover("dead", "a", "e1", [env(2, 1), env(5, 1), env(6, 1)])
    assert given == 5
    assert ids(r, "a") == ["e1.1.1", "e1.2.1", "e1.3.1", "e1.5.1", "e1.6.1", "e1.7.1"]
    assert not r.exists("rm:inflight:dead:a")
    assert survivor.inflight_users("dead") == set()
    assert 0 < r.ttl("rm:users:a:messages") <= 100


def test_a_merge_puts_inbox_messages_in_the_places_it_is_given(store, r):
    """An inbox message's id is made from its entry, so it says nothing of its place: a
    redo gives the place apart, and queued inbox messages keep the stream's order (their
    entry ids). Before, a merged one went in front (a redo of a joining process's window
    put entry 800 before 0-790 in the inbox test)."""
    def inbox(n: int) -> str:
        return json.dumps({"id": f"i-{n}-0", "payload": str(n)}, separators=(",", ":"))

    for n in (1, 2, 6, 7):  # 3-5 were missed (a joining process's window), 6-7 queued after
        store.append("u", inbox(n))
    store.append("u", env(9, 1))
    assert store.merge("u", "e1", [inbox(3), inbox(4), inbox(5)], ["e1.3.1", "e1.3.2", "e1.4.1"]) == 3
    assert ids(r, "u") == ["i-1-0", "i-2-0", "i-3-0", "i-4-0", "i-5-0", "i-6-0", "i-7-0", "e1.9.1"], (
        "the merged ones in their places; a queued inbox message after those of older entries")
    store.append("u", env(10, 1))
    assert store.merge("u", "e1", [env(8, 1)]) == 1
    assert ids(r, "u")[-3:] == ["e1.8.1", "e1.9.1", "e1.a.1"], "places from ids, as before"


def test_a_dead_servers_checkpoint_outlives_its_recovery_for_two_minutes(store, r):
    """Every survivor redoes the dead server's window after its checkpoint, the winner
    first: the others read the checkpoint after the winner is done."""
    assert store.checkpoint("srv2") == 0
    store.write_checkpoint("srv2", 41)
    assert store.checkpoint("srv2") == 41
    r.sadd("rm:inflight:srv2", "u")
    store.forget_dead("srv2")
    assert not r.exists("rm:inflight:srv2")
    assert store.checkpoint("srv2") == 41 and 0 < r.ttl("rm:servers:srv2:checkpoint") <= 120


def test_recover_remembers_what_it_merged_so_a_later_merge_adds_nothing(store, r):
    era_item = json.dumps({"id": "e1.5.1", "p": 1}, separators=(",", ":"))  # as envelopes are
    assert store.recover("srv2", "u", "e1", [era_item]) == 1
    r.delete("rm:users:u:messages")  # a drain took it
    assert store.merge("u", "e1", [era_item]) == 0
    assert not r.exists("rm:users:u:messages")


def test_a_give_back_of_a_message_queued_already_leaves_one_copy(r):
    """Two processes whose tabs of one user both went away give back what each kept for
    its own tab: the same messages, in envelopes that may differ (their own timestamps)."""
    mine = Store(r, "srv1", queue_expiry=100, max_queue_length=100)
    other = Store(r, "srv2", queue_expiry=100, max_queue_length=100)
    mine.append("u", env(9, 1))
    mine.recommit("u", [env(2, 1), env(3, 1), env(5, 1)])
    restamped = [json.dumps({**json.loads(env(seq, 1)), "t": 1}, separators=(",", ":"))
                 for seq in (1, 3, 5, 7)]
    other.recommit("u", restamped)
    assert ids(r, "u") == ["e1.1.1", "e1.2.1", "e1.3.1", "e1.5.1", "e1.7.1", "e1.9.1"]
    # Entries without an id (another program's) are never taken for one another.
    mine.recommit("u", ["plain", "plain"])
    assert r.lrange("rm:users:u:messages", 0, 1) == [b"plain", b"plain"]


def test_a_batch_of_writes_sent_again_queues_nothing_twice(r):
    """Redis ran the batch and went down before replying (restarted from its append-only
    file): the listener sends the same batch again."""
    store = Store(r, "srv1", queue_expiry=100, max_queue_length=100)
    for _ in range(2):
        writes = store.writes()
        for seq in (1, 2, 3):
            writes.append("u", env(seq, 1))
        writes.execute()
    assert ids(r, "u") == ["e1.1.1", "e1.2.1", "e1.3.1"]
    store.append("u", "plain")  # entries without an id are never taken for one another
    store.append("u", "plain")
    assert r.lrange("rm:users:u:messages", -2, -1) == [b"plain", b"plain"]
