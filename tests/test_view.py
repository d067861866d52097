"""cluster.View: the state every process derives from the same events, without Redis."""

from __future__ import annotations

import time

from rm_flask.cluster import LATER_REDO_WAIT, RECOVERY_WAIT, View
from rm_flask.cluster_events import parse
from rm_flask.sequence import message_id
from tests.support.views import Events, joined, random_events, wire


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
    view.apply(parse(wire(g=20, t="ping", s="B", u=[], w=[], e=9)))  # B has read up to 9
    assert view.sealed("u", 9, "B") and not view.sealed("u", 21, "B")
    view.apply(parse(wire(g=21, t="down", s="B")))
    assert view.redoing() and not view.sealed("u", 30, "B")
    view.apply(parse(wire(g=22, t="recovered", s="A", u=[], w=[], e="B")))
    assert not view.redoing() and view.sealed("u", 30, "B")


def test_drains_after_a_rejoin_wait_for_every_redo_of_the_window():
    """After a Redis restart the processes come back one after the other: the first redo
    of a window in may be the one with the least of it (the CI run of stop 21 met that:
    1 and 2 messages late). The drains wait for every process's redo, and once one is
    in, for the others a moment at most."""
    view = joined("C", ["A", "B", "C"])
    event = Events(view)
    event("ready", "A", u=[], w=[], e="0 0")
    assert view.redoing()
    event("redone", "C", u=[], w=[], e="A")
    assert view.redoing(), "B's redo may hold what C's had not"
    assert view.recovering["gap A"] <= time.monotonic() - RECOVERY_WAIT + LATER_REDO_WAIT
    event("redone", "B", u=[], w=[], e="A")
    assert not view.redoing()
    # A redoer that dies is not waited for; one that is not there at all, a moment.
    event("ready", "B", u=[], w=[], e="0 0")
    event("down", "A")
    assert "gap B" in view.recovering, "C's redo of B's window is still to come"
    event("redone", "C", u=[], w=[], e="B")
    assert "gap B" not in view.recovering


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
    """The id of the n-th message after an event is made from the view (era, event) and
    n, as the dispatcher's `_incoming` makes it."""
    a, b = joined("A", ["A", "B"]), joined("B", ["A", "B"])

    def ids(view: View) -> list[str]:
        return [message_id(view.era, view.seq, n) for n in (1, 2, 3)]

    before = ids(a)
    assert before == ids(b) and len(set(before)) == 3
    Events(a, b)("ping", "A", u=[], w=[], e=0)
    assert ids(a) == ids(b) and ids(a)[0] == "e1.1.1" and not set(ids(a)) & set(before)


# Who queues, or delivers, a message (docs/cluster.md, the table under "The idea").

def handlers(views: list[View], uid: str) -> tuple[set[str], set[str]]:
    """(the processes that queue it, those that send it to their sockets), each process
    judging for itself, and every view agreeing on the whole route."""
    routes = {view.route(uid) for view in views}
    assert len(routes) == 1, routes
    route = routes.pop()
    mine = [view.me for view in views if view.route(uid).ours(view.me)]
    queue = {me for me in mine if route.queue_by == me}
    return queue, {me for me in mine if me in route.deliver_on}


def test_a_user_with_no_socket_is_queued_by_the_owner_alone():
    views = [joined(me, ["A", "B", "C"]) for me in "ABC"]
    for uid in (f"user{i}" for i in range(30)):
        queue, deliver = handlers(views, uid)
        assert queue == {views[0].owner(uid)} and deliver == set()
        assert views[0].route(uid).duty == views[0].owner(uid)


def test_sockets_on_one_process_are_its_duty_even_when_another_owns_the_user():
    views = [joined(me, ["A", "B", "C"]) for me in "ABC"]
    uid = next(f"user{i}" for i in range(100) if views[0].owner(f"user{i}") != "B")
    event = Events(*views)
    event("on", "B", c="b1", u=uid, x=[], d=0)
    event("on", "B", c="b2", u=uid, x=[], d=0)
    assert handlers(views, uid) == (set(), {"B"})
    assert views[0].route(uid).duty == "B"


def test_sockets_on_two_processes_each_send_to_their_own_and_nobody_queues():
    views = [joined(me, ["A", "B", "C"]) for me in "ABC"]
    event = Events(*views)
    event("on", "B", c="b1", u="u", x=[], d=0)
    event("on", "C", c="c1", u="u", x=[], d=0)
    assert handlers(views, "u") == (set(), {"B", "C"})
    assert views[0].route("u").duty is None  # each one's copy stands if the other dies


def test_a_draining_user_is_queued_behind_the_drain_by_the_owner_only():
    views = [joined(me, ["A", "B", "C"]) for me in "ABC"]
    event = Events(*views)
    event("on", "B", c="b1", u="u", x=[], d=1)  # the identify starts a drain
    event("on", "C", c="c1", u="u", x=[], d=0)
    owner = views[0].owner("u")
    assert handlers(views, "u") == ({owner}, set())
    event("ending", "B", u=["u"], w=[], e=0)
    assert handlers(views, "u") == (set(), {"B", "C"})


def test_every_process_decides_the_same_through_any_sequence_of_events():
    """Random identifies, leaves, drains and a death: at every point, the views agree on
    every user's route, and each message has exactly one queuer or at least one sender."""
    views = [joined(me, ["A", "B", "C"]) for me in "ABC"]
    uids = [f"u{i}" for i in range(12)]
    for step in random_events(views, uids, 400, seed=7, death_at=250):
        live = [view for view in views if view.me in views[0].servers]
        for u in uids:
            queue, deliver = handlers(live, u)
            assert (len(queue), bool(deliver)) in {(1, False), (0, True)}, (step, u)
