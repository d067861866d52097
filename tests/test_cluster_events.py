"""What each script of `cluster.Cluster` publishes, read back through `cluster_events.parse`
from a real redis-server: the type and every field, as the dispatcher and the view read
them. And what `parse` refuses."""

from __future__ import annotations

import time

import pytest
import redis

from rm_flask import names
from rm_flask.cluster import Cluster
from rm_flask.cluster_events import (
    Copy,
    Down,
    Ending,
    Event,
    Off,
    On,
    Ping,
    Ready,
    Recovered,
    Redone,
    Returned,
    Sealed,
    Up,
    parse,
)


@pytest.fixture
def published(r: redis.Redis):
    """The events published on `rm:cluster` by the processes named `digits-*` (other
    tests' servers may share this Redis), parsed, in order."""
    pubsub = r.pubsub()
    pubsub.subscribe(names.CLUSTER_CHANNEL)
    pubsub.get_message(timeout=1)  # the subscribe reply

    def read(count: int) -> list[Event]:
        events: list[Event] = []
        deadline = time.monotonic() + 5
        while len(events) < count and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.2)
            if message and message["type"] == "message":
                event = parse(message["data"])
                if event.server.startswith("0123"):
                    events.append(event)
        assert len(events) == count, events
        return events

    yield read
    pubsub.close()


def test_every_script_publishes_the_event_of_its_type(r, published):
    # A server id of digits only, with a leading zero: one in about 300 random ids is all
    # digits, and Lua's tonumber would have made it a number (and dropped the zero).
    me, dead = "012345678901", "012300000000"
    a = Cluster(r, me)
    a.up([], "heartbeat", 10, rejoin=True)
    a.on("s1", "alice", 5)
    a.on("s2", "alice", 1)  # past the limit: s1 goes
    a.off("s2", "alice", True)
    for kind, ref in [("ping", 41), ("ending", 0), ("sealed", 42), ("returned", 43),
                      ("ready", "40 7"), ("redone", dead), ("recovered", dead)]:
        a.mark(kind, ["alice"], ref=ref)
    a.copy("alice", ['{"id":"e.1.1"}'], over=True, to="s9")
    Cluster(r, "0123-b").down(dead)
    up, on1, on2, off, ping, ending, sealed, returned, ready, redone, recovered, copy, down = published(13)

    assert isinstance(up, Up) and up.server == me and up.rejoin and up.restored == () and up.started == ()
    assert isinstance(on1, On) and (on1.sid, on1.uid, on1.evicted, on1.first) == ("s1", "alice", (), True)
    assert isinstance(on2, On) and on2.evicted == ((me, "s1"),) and not on2.first
    assert isinstance(off, Off) and (off.sid, off.uid, off.giving_back) == ("s2", "alice", True)
    assert isinstance(ping, Ping) and ping.read == 41 and ping.uids == ("alice",)
    assert isinstance(ending, Ending) and ending.uids == ("alice",)
    assert isinstance(sealed, Sealed) and sealed.before == 42
    assert isinstance(returned, Returned) and returned.off == 43
    assert isinstance(ready, Ready) and ready.since == (40, 7)
    assert isinstance(redone, Redone) and redone.joined == dead
    assert isinstance(recovered, Recovered) and recovered.dead == dead
    assert isinstance(copy, Copy) and (copy.uid, copy.over, copy.to, copy.messages) == (
        "alice", True, "s9", ('{"id":"e.1.1"}',))
    assert isinstance(down, Down) and down.server == dead
    numbers = [e.seq for e in (up, on1, on2, off, ping, ending, sealed, returned, ready, redone,
                               recovered, copy, down)]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)


def test_a_rejoin_names_the_sockets_it_put_back_and_the_drains_it_starts(r, published):
    me = "012345678902"
    Cluster(r, me).up([("s1", "bob"), ("s2", "carol")], "heartbeat", 10, rejoin=True)
    (up,) = published(1)
    assert isinstance(up, Up)
    assert up.restored == (("s1", "bob"), ("s2", "carol"))
    assert sorted(up.started) == ["bob", "carol"]


@pytest.mark.parametrize("data", [
    b'{"g": 1, "t": "gossip", "s": "A", "u": [], "w": [], "e": ""}',  # an unknown kind
    b'{"g": 1, "t": "on", "s": "A"}',  # fields missing
    b'not json',
])
def test_what_is_not_an_event_is_refused(data):
    with pytest.raises((ValueError, KeyError)):
        parse(data)
