"""What this process does with one message for one user: the local half of routing.

`View.route` (cluster.py) says, from the view every process shares, who queues a message
and which processes send it. This says what this process does with its part, from that
route and from what only this process knows: whether it is still opening (its first
drains wait for the others' redo), the phase of the user's drain here, and whether one of
the user's sockets is still open here. Both are pure, so the routing table of
docs/cluster.md is two functions and their tests (tests/test_view.py, tests/test_router.py).
"""

from __future__ import annotations

from enum import Enum

from .cluster import Route


class Action(Enum):
    """What happens to a message for a user, in this process."""

    NOTHING = "nothing"  # another process queues or sends it
    QUEUE = "queue"  # appended to the user's queue in Redis
    HOLD = "hold"  # kept in memory behind a drain that ends here, then sent
    KEEP = "keep"  # kept to be given back: the user's last socket here is leaving
    SEND = "send"  # sent to the user's sockets here (recorded in flight if all ack)


def decide(route: Route, me: str, *, opening: bool, holds: bool, live: bool) -> Action:
    """What this process (`me`) does with a message that `route` gives it.

    `opening`: we have not read our `ready` yet, with other processes in the view.
    `holds`: the user's drain here is ending and holds live messages (`Phase.holds`).
    `live`: a socket of the user here is still open (one that leaves keeps its place in
    the view until every process reads its `off`).
    """
    if route.queue_by is not None:
        # Nobody online, or their queue drains: the owner queues it, behind the drain,
        # and a drain's copies reach the user's sockets on the other processes.
        return Action.QUEUE if route.queue_by == me else Action.NOTHING
    if me not in route.deliver_on:
        return Action.NOTHING
    if opening and route.deliver_on == (me,):
        # Its drain begins at our `ready`, behind what the others redo for the window
        # we were not there.
        return Action.QUEUE
    if holds:
        return Action.HOLD
    if not live:
        # Our sockets of the user left and the others have not read it yet: given back
        # with what they held, at our `off`. Also when other processes hold sockets of
        # the user, theirs may be leaving too, unread as ours; each gives it back, and
        # the queue keeps one copy.
        return Action.KEEP
    return Action.SEND
