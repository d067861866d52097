"""delivery.Delivery with a fake transport: in flight until acknowledged, delivered once
written, a slow socket cut off, and a joining tab brought up to date. No Redis: the
settler's store records what it would clear (its script is tested in test_store.py)."""

from __future__ import annotations

from rm_flask.acks import Settler
from rm_flask.cluster import View
from rm_flask.delivery import Delivery
from rm_flask.envelope import Message
from rm_flask.metrics import Metrics
from rm_flask.registry import Conn, Pending, Registry, User
from tests.support.fakes import FakeStore


class FakeTransport:
    """Takes frames until a socket's `room` is used up; records closes."""

    def __init__(self) -> None:
        self.frames: dict[str, list[tuple[str, bool]]] = {}
        self.callbacks: dict[tuple[str, str], object] = {}
        self.room: dict[str, int] = {}
        self.closed: list[str] = []

    def send(self, conn: Conn, msg: Message, bubble: bool, callback) -> bool:
        if self.room.get(conn.sid, 1_000) <= len(self.frames.get(conn.sid, [])):
            return False
        self.frames.setdefault(conn.sid, []).append((msg.id, bubble))
        if callback is not None:
            self.callbacks[(conn.sid, msg.id)] = callback
        return True

    def disconnect(self, conn: Conn) -> None:
        self.closed.append(conn.sid)


def msg(n: int) -> Message:
    return Message.from_queue(f'{{"id":"e.1.{n:x}","payload":"{n}"}}'.encode(), "rm.users.u")[0]


def setup(*tabs: tuple[str, bool]) -> tuple[Delivery, User, FakeTransport, FakeStore, Metrics]:
    """User `u` with tabs (sid, ack) on this process, "me", oldest first."""
    registry = Registry(100, 10)
    view = View("me")
    view.load(0, "e", ["me"], [], [])
    for sid, ack in tabs:
        conn = registry.connect(sid, "127.0.0.1:1")
        conn.ack = ack
        registry.join(conn, "u")
        view.sockets.setdefault("u", []).append(("me", sid))
    transport, store, metrics = FakeTransport(), FakeStore(), Metrics()
    delivery = Delivery("me", view, registry, transport, metrics, Settler(store), store.track)
    return delivery, registry.user("u"), transport, store, metrics


def delivered(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("rm_messages_delivered_total") or 0


def test_an_ack_mode_message_waits_for_one_ack_from_any_tab_then_is_settled():
    delivery, user, transport, store, metrics = setup(("a", True), ("b", True))
    first = msg(1)
    assert delivery.send(user, first, True, delivery.bubble("u"))
    assert transport.frames == {"a": [("e.1.1", True)], "b": [("e.1.1", False)]}
    assert set(user.pending) == {"e.1.1"} and delivered(metrics) == 0
    transport.callbacks[("b", "e.1.1")]()
    transport.callbacks[("a", "e.1.1")]()  # the other tab's ack finds nothing left
    assert user.pending == {} and delivered(metrics) == 1
    delivery.settler.settle_due()
    assert store.calls == [{"u": [first.stored]}]


def test_a_plain_tab_makes_a_message_delivered_once_written():
    delivery, user, transport, _, metrics = setup(("a", False))
    assert delivery.send(user, msg(1), False, None)
    assert user.pending == {} and delivered(metrics) == 1 and transport.callbacks == {}


def test_a_tab_that_stops_reading_is_cut_off_and_the_message_waits_on_the_others():
    delivery, user, transport, _, metrics = setup(("plain", False), ("acks", True))
    transport.room["plain"] = 0
    assert delivery.send(user, msg(1), False, None)
    assert transport.closed == ["plain"] and [c.sid for c in user.live()] == ["acks"]
    # Only an ack-mode tab took it: delivered when that tab acknowledges it.
    assert delivered(metrics) == 0 and user.pending["e.1.1"].waiting == {"acks"}
    transport.callbacks[("acks", "e.1.1")]()
    assert delivered(metrics) == 1


def test_no_tab_took_it_says_so():
    delivery, user, transport, _, _ = setup(("a", False))
    transport.room["a"] = 0
    assert not delivery.send(user, msg(1), False, None)


def test_a_joining_tab_gets_what_the_others_hold_then_what_the_drain_sent_in_order():
    delivery, user, transport, _, metrics = setup(("a", True))
    delivery.send(user, msg(1), True, None)  # live, not acknowledged yet
    user.drain_log += [msg(2), msg(3)]
    for m in user.drain_log:
        delivery.send(user, m, True, None)
    late = Conn("late", "127.0.0.1:2", ack=False)
    delivery.replay(user, late)
    assert [i for i, _ in transport.frames["late"]] == ["e.1.1", "e.1.2", "e.1.3"]
    # A plain tab took them: each is delivered now, and the ack-mode tab's ack is moot.
    assert user.pending == {} and delivered(metrics) == 3


def test_a_joining_tab_also_gets_first_what_a_tab_that_left_held_or_was_kept_for_it():
    """What goes back to the queue once the others read that a tab left reaches the tab
    that replaces it first, in sequence order, not after newer messages."""
    delivery, user, transport, _, _ = setup(("t0", True))
    delivery.send(user, msg(3), True, None)
    user.leaving["gone"] = [Pending(msg(1), set())]
    user.leftover.append(msg(2))
    late = Conn("late", "127.0.0.1:2", ack=True)
    delivery.replay(user, late)
    assert [i for i, _ in transport.frames["late"]] == ["e.1.1", "e.1.2", "e.1.3"]
    assert user.pending["e.1.3"].waiting == {"t0", "late"}, "its ack counts too"


def test_what_a_tab_that_left_held_becomes_the_new_tabs_and_is_not_given_back_too():
    """Replayed to the new tab and also given back with the tab that left, a message
    came again after the new tab had acknowledged it (the churn test: 1 in 1 of 15 runs)."""
    delivery, user, transport, store, metrics = setup(("t0", True))
    user.leaving["gone"] = [Pending(msg(1), set())]
    late = Conn("late", "127.0.0.1:2", ack=True)
    user.conns.append(late)
    delivery.replay(user, late)
    assert user.leaving["gone"] == [], "not given back with the tab that left"
    assert user.pending["e.1.1"].waiting == {"late"}
    transport.callbacks[("late", "e.1.1")]()
    assert user.pending == {} and delivered(metrics) == 1
    plain = Conn("plain", "127.0.0.1:3", ack=False)
    user.leaving["gone"] = [Pending(msg(2), set())]
    delivery.replay(user, plain)
    assert user.leaving["gone"] == [] and delivered(metrics) == 2, "written to a plain tab: delivered"


def test_what_was_kept_for_a_give_back_and_is_replayed_becomes_the_new_tabs():
    """Kept while the user had no socket here (the last one leaving), replayed to the
    tab that came, and also given back with the one that left, a message came again
    after the new tab had acknowledged it (40 tabs churning by FIN: 2-21 a run)."""
    delivery, user, transport, store, metrics = setup(("gone", True))
    user.conns[0].closing = True  # leaving: what came meanwhile was kept
    user.leftover += [msg(1), msg(2)]
    late = Conn("late", "127.0.0.1:2", ack=True)
    user.conns.append(late)
    delivery.replay(user, late)
    assert [i for i, _ in transport.frames["late"]] == ["e.1.1", "e.1.2"]
    assert user.leftover == [], "not given back with the tab that left"
    assert store.tracked == [("u", [msg(1).stored, msg(2).stored])], "in flight before written"
    assert user.pending["e.1.1"].waiting == {"late"}
    transport.callbacks[("late", "e.1.1")]()
    assert list(user.pending) == ["e.1.2"] and delivered(metrics) == 1
    plain = Conn("plain", "127.0.0.1:3", ack=False)
    user.leftover.append(msg(3))
    delivery.replay(user, plain)
    assert user.leftover == [] and delivered(metrics) == 3, "written to a plain tab: delivered"
    assert len(store.tracked) == 1, "a plain tab's messages are not in flight"


def test_a_tab_awaiting_replays_gets_them_and_what_came_meanwhile_in_sequence_order():
    delivery, user, transport, _, _ = setup(("t0", True))
    tab = user.conns[0]
    tab.awaiting = {"other"}
    delivery.send(user, msg(5), True, None)
    delivery.send(user, msg(4), True, None)
    assert "t0" not in transport.frames, "nothing before the replay"
    tab.replayed = [msg(2), msg(1), msg(4)]
    delivery.caught_up(user, tab)
    assert [i for i, _ in transport.frames["t0"]] == ["e.1.1", "e.1.2", "e.1.4", "e.1.5"]
    assert not tab.awaiting and not tab.held_writes and not tab.replayed
