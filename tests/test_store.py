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
    batch = store.claim("u", 3)
    assert payloads(batch) == [0, 1, 2]
    assert payloads(r.lrange("rm:users:u:messages", 0, -1)) == [3, 4]
    assert payloads(r.zrange("rm:inflight:srv1:u", 0, -1)) == [0, 1, 2]
    assert r.smembers("rm:inflight:srv1") == {b"u"}
    store.append("u", item(5))
    store.settle("u", [batch[0]])
    store.recommit("u", batch[1:])
    assert payloads(r.lrange("rm:users:u:messages", 0, -1)) == [1, 2, 3, 4, 5]
    assert not r.exists("rm:inflight:srv1:u") and not r.exists("rm:inflight:srv1")


def test_recommit_all_gives_a_dead_servers_messages_back(r):
    dead = Store(r, "dead", queue_expiry=100, max_queue_length=100)
    for n in range(4):
        dead.append("a", item(n))
        dead.append("b", item(n))
    dead.claim("a", 2)
    dead.claim("b", 4)
    writes = dead.writes()
    writes.track("b", item(99))
    writes.execute()
    survivor = Store(r, "alive", queue_expiry=100, max_queue_length=100)
    assert survivor.recommit_all("dead") == {"a": 2, "b": 5}
    assert payloads(r.lrange("rm:users:a:messages", 0, -1)) == [0, 1, 2, 3]
    assert payloads(r.lrange("rm:users:b:messages", 0, -1)) == [0, 1, 2, 3, 99]
    assert not r.keys("rm:inflight:*")
