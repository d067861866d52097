"""router.decide: what one process does with its part of a message, without Redis.

Beside tests/test_view.py (the route every process agrees on), these take each process's
own state too: whether it is opening, the phase of the user's drain there, and whether a
socket of the user is still open there."""

from __future__ import annotations

import random

import pytest

from rm_flask.cluster import Route
from rm_flask.router import Action, decide
from tests.support.views import joined, random_events

CALM = {"opening": False, "holds": False, "live": True}


@pytest.mark.parametrize(("route", "me", "state", "action"), [
    # Nobody online: the owner alone queues.
    (Route("A", (), "A"), "A", CALM, Action.QUEUE),
    (Route("A", (), "A"), "B", CALM, Action.NOTHING),
    # Its queue drains (its sockets may be anywhere): still the owner alone, whatever
    # the owner's own sockets or phase.
    (Route("A", (), "A"), "A", {**CALM, "holds": True, "live": False}, Action.QUEUE),
    # Sockets here only: sent, unless this process is opening (its drain waits for the
    # others' redo, so the message takes its place in the queue).
    (Route(None, ("A",), "A"), "A", CALM, Action.SEND),
    (Route(None, ("A",), "A"), "A", {**CALM, "opening": True}, Action.QUEUE),
    (Route(None, ("A",), "A"), "B", CALM, Action.NOTHING),
    # Sockets on two processes: each sends to its own, opening or not.
    (Route(None, ("A", "B"), None), "B", {**CALM, "opening": True}, Action.SEND),
    (Route(None, ("A", "B"), None), "C", CALM, Action.NOTHING),
    # A drain here is ending: live messages wait behind its last queued ones.
    (Route(None, ("A",), "A"), "A", {**CALM, "holds": True}, Action.HOLD),
    (Route(None, ("A",), "A"), "A", {**CALM, "holds": True, "live": False}, Action.HOLD),
    # The user's sockets here left, unread by the view: kept to be given back.
    (Route(None, ("A",), "A"), "A", {**CALM, "live": False}, Action.KEEP),
    (Route(None, ("A", "B"), None), "A", {**CALM, "live": False}, Action.KEEP),
])
def test_the_local_routing_table(route: Route, me: str, state: dict, action: Action) -> None:
    assert decide(route, me, **state) is action


def test_across_processes_each_message_is_queued_once_or_taken_by_every_holder() -> None:
    """Random identifies, leaves, drains and local states on three processes: each
    message is queued by exactly one process and taken by none, or queued by none and
    taken (sent, held, or kept to be given back) by every process holding a socket."""
    rng = random.Random(11)
    views = [joined(me, ["A", "B", "C"]) for me in "ABC"]
    uids = [f"u{i}" for i in range(12)]
    taken_by = {Action.SEND, Action.HOLD, Action.KEEP}
    for _ in random_events(views, uids, 400, seed=11):
        for u in uids:
            holders = {s for s, _ in views[0].sockets.get(u, [])}
            actions = {}
            for view in views:
                state = {"opening": rng.random() < 0.1, "holds": rng.random() < 0.2,
                         "live": rng.random() < 0.8}
                actions[view.me] = decide(view.route(u), view.me, **state)
            queuers = [me for me, a in actions.items() if a is Action.QUEUE]
            takers = {me for me, a in actions.items() if a in taken_by}
            assert (len(queuers), takers) in [(1, set()), (0, holders)], (u, holders, actions)
