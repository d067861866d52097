"""A user's drain phase (`registry.Phase`): each transition, and what it does with the
messages held meanwhile. Plain objects, no Redis: docs/cluster.md has the table."""

from __future__ import annotations

from rm_flask.envelope import Message
from rm_flask.registry import Phase, Registry, User


def msg(n: int) -> Message:
    return Message.from_queue(f'{{"id":"e.1.{n:x}","payload":"{n}"}}'.encode(), "rm.users.u")[0]


def test_our_drain_runs_then_ends_holding_live_messages_until_the_last_queued_are_sent():
    user = User("u")
    assert user.phase is Phase.IDLE and not user.phase.runs and not user.phase.holds
    user.begin_drain()
    assert user.phase is Phase.DRAINING and user.phase.runs and not user.phase.holds
    user.hold(None)  # a claim came back empty: `ending` is published
    assert user.phase is Phase.ENDING and user.phase.holds
    user.end = (7, "owner")  # `ending` read
    user.held += [msg(1), msg(2)]
    assert [m.id for m in user.release()] == ["e.1.1", "e.1.2"]
    assert user.phase is Phase.DRAINING and user.held == [] and user.end is None
    user.stop_drain()
    assert user.phase is Phase.IDLE and user.leftover == []


def test_a_drain_stopped_while_ending_gives_back_what_it_held():
    user = User("u")
    user.begin_drain()
    user.hold(None)
    user.held.append(msg(1))
    user.drain_log.append(msg(0))
    user.stop_drain()  # our sockets left before the end was certified
    assert user.phase is Phase.IDLE and [m.id for m in user.leftover] == ["e.1.1"]
    assert user.held == [] and user.drain_log == [] and user.end is None


def test_a_tab_back_before_the_give_back_resumes_the_stopped_ending_drain():
    """What the queue still holds from before the end is older than what the drain
    held back: given those first, a tab that came back got the queue's late."""
    user = User("u")
    user.begin_drain()
    user.hold((7, "owner"))
    user.held.append(msg(2))
    user.stop_drain()
    assert user.interrupted and user.end == (7, "owner"), "the end is kept for a resume"
    user.leftover.append(msg(3))  # came while no tab was here
    user.resume_ending()
    assert user.phase is Phase.ENDING and user.end == (7, "owner")
    assert [m.id for m in user.held] == ["e.1.2", "e.1.3"] and user.leftover == []
    assert not user.interrupted


def test_what_a_stopped_ending_drain_held_given_back_leaves_nothing_to_resume():
    user = User("u")
    user.begin_drain()
    user.hold((7, "owner"))
    user.held.append(msg(2))
    user.stop_drain()
    assert [m.id for m in user.take_leftover()] == ["e.1.2"]
    assert not user.interrupted and user.end is None and user.leftover == []
    user.begin_drain()
    user.hold(None)
    user.stop_drain()  # ending, its end not read yet: nothing was held
    assert user.interrupted and user.end is None


def test_following_another_drain_then_its_last_copy_releases():
    user = User("u")
    user.hold((9, "owner"))  # another process's `ending`, read here
    assert user.phase is Phase.FOLLOWING and user.phase.holds and not user.phase.runs
    user.held.append(msg(3))
    assert [m.id for m in user.release()] == ["e.1.3"]
    assert user.phase is Phase.IDLE


def test_a_drain_that_moves_here_while_following_sends_the_rest_itself():
    user = User("u")
    user.hold((9, "owner"))
    user.begin_drain()
    assert user.phase is Phase.ENDING and user.end == (9, "owner")


def test_the_last_tab_leaving_while_following_gives_back_what_it_held():
    user = User("u")
    user.hold((9, "owner"))
    user.held.append(msg(4))
    user.stop_following()
    assert user.phase is Phase.IDLE and [m.id for m in user.leftover] == ["e.1.4"]
    # Not following: nothing to do (our own drain's held messages are its to send).
    user.begin_drain()
    user.hold(None)
    user.held.append(msg(5))
    user.stop_following()
    assert user.phase is Phase.ENDING and [m.id for m in user.held] == ["e.1.5"]


def test_a_user_is_forgotten_only_once_idle():
    registry = Registry(conn_limit=10, user_conn_limit=3)
    user = registry.hold("u")
    user.begin_drain()
    registry.forget_if_idle(user)
    assert registry.user("u") is user
    user.stop_drain()
    registry.forget_if_idle(user)
    assert registry.user("u") is None
