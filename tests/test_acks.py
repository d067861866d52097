"""acks.Settler: delivered messages leave Redis in batches, and a batch Redis refused is
kept, not dropped. A fake store stands in for `Store.settle_many` (its script is tested
against Redis in test_store.py)."""

from __future__ import annotations

import threading

from rm_flask.acks import Settler
from tests.support.fakes import FakeStore
from tests.support.processes import wait_until


def test_what_is_due_goes_in_one_round_trip_by_user():
    store = FakeStore()
    settler = Settler(store)
    settler.settle("u", ["a"])
    settler.settle("v", ["b"])
    settler.settle("u", ["c", "d"])
    assert settler.settle_due()
    assert store.calls == [{"u": ["a", "c", "d"], "v": ["b"]}]
    assert settler.settle_due() and len(store.calls) == 1  # nothing due: no call


def test_a_batch_redis_refused_is_settled_later_with_what_came_since():
    store = FakeStore()
    store.refuse = 1
    settler = Settler(store)
    settler.settle("u", ["a"])
    assert not settler.settle_due()
    settler.settle("u", ["b"])
    assert settler.settle_due()
    assert store.calls == [{"u": ["a", "b"]}]


def test_the_loop_settles_soon_after_an_ack_and_stops_when_told():
    store = FakeStore()
    settler = Settler(store)
    stopped = threading.Event()
    loop = threading.Thread(target=settler.run, args=(stopped,))
    loop.start()
    try:
        settler.settle("u", ["a"])
        wait_until(lambda: store.calls == [{"u": ["a"]}], 2, "the ack settled")
    finally:
        stopped.set()
        settler.wake()
        loop.join(5)
    assert not loop.is_alive()
