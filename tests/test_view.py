"""cluster.View: the state every process derives from the same events, without Redis."""

from __future__ import annotations

from itertools import count

from rm_flask.cluster import View


class Events:
    """Numbered events, as the scripts publish them."""

    def __init__(self, *views: View) -> None:
        self.views = views
        self.seq = count(1)

    def __call__(self, t: str, s: str, **fields) -> int:
        event = {"g": next(self.seq), "t": t, "s": s, **fields}
        for view in self.views:
            view.apply(event)
        return event["g"]


def joined(me: str, servers: list[str]) -> View:
    view = View(me)
    view.load(0, "e1", servers, [], [])
    return view


def test_every_process_agrees_on_the_owner_and_a_join_moves_only_what_it_wins():
    a, b = joined("A", ["A", "B"]), joined("B", ["A", "B"])
    uids = [f"user{i}" for i in range(300)]
    before = {u: a.owner(u) for u in uids}
    assert before == {u: b.owner(u) for u in uids}
    assert set(before.values()) == {"A", "B"}
    Events(a, b)("up", "C")
    after = {u: a.owner(u) for u in uids}
    assert after == {u: b.owner(u) for u in uids}
    moved = [u for u in uids if after[u] != before[u]]
    assert moved and all(after[u] == "C" for u in moved)
    assert 50 < len(moved) < 150  # about a third


def test_sockets_bubble_home_and_drains_follow_the_events():
    view = joined("A", ["A", "B"])
    event = Events(view)
    begun = event("on", "B", c="b1", u="u", x=[], d=1)
    assert view.home("u") == "B" and view.draining["u"][0] == begun
    event("on", "A", c="a1", u="u", x=[], d=0)
    assert view.sockets["u"] == [("B", "b1"), ("A", "a1")]
    event("ending", "B", u=["u"], w=[], e=0)
    assert "u" not in view.draining
    event("on", "A", c="a2", u="u", x=["B b1"], d=0)  # past user_conn_limit: b1 closed
    assert view.sockets["u"] == [("A", "a1"), ("A", "a2")] and view.home("u") == "A"
    event("off", "A", c="a1", u="u", r=1)
    assert view.returning == {"u": {"A"}}
    started = event("returned", "A", u=["u"], w=["u"], e=0)
    assert view.returning == {} and view.draining["u"][0] == started
    event("off", "A", c="a2", u="u", r=1)
    assert "u" not in view.sockets and "u" not in view.draining


def test_a_drain_waits_for_its_owner_in_any_of_three_ways():
    view = joined("A", ["A", "B"])
    assert view.sealed("u", 5, "A")  # we are the owner: we read it ourselves
    assert not view.sealed("u", 5, "B")
    Events(view)("sealed", "B", u=["u"], w=[], e=5)
    assert view.sealed("u", 5, "B") and not view.sealed("u", 9, "B")
    view.apply({"g": 20, "t": "ping", "s": "B", "e": 9})  # B has read up to 9
    assert view.sealed("u", 9, "B") and not view.sealed("u", 21, "B")
    view.apply({"g": 21, "t": "down", "s": "B"})
    assert view.redoing() and not view.sealed("u", 30, "B")
    view.apply({"g": 22, "t": "recovered", "s": "A", "u": [], "w": [], "e": "B"})
    assert not view.redoing() and view.sealed("u", 30, "B")


def test_a_dead_server_takes_its_sockets_with_it():
    view = joined("A", ["A", "B"])
    event = Events(view)
    event("on", "B", c="b1", u="u", x=[], d=1)
    event("on", "A", c="a1", u="u", x=[], d=0)
    event("on", "B", c="b2", u="v", x=[], d=1)
    event("down", "B")
    assert view.servers == ["A"]
    assert view.sockets == {"u": [("A", "a1")]}
    assert "v" not in view.draining and view.home("u") == "A"


def test_message_ids_are_the_same_for_every_reader_and_new_after_each_event():
    a, b = joined("A", ["A", "B"]), joined("B", ["A", "B"])
    ids = [(a.next_id(), b.next_id()) for _ in range(3)]
    assert [x for x, y in ids if x != y] == []
    Events(a, b)("ping", "A", e=0)
    assert a.next_id() == b.next_id() == "e1.1.1"
    assert len({x for x, _ in ids}) == 3
