"""The cluster's events, typed: what the scripts in `cluster.py` publish on `rm:cluster`.

On the wire an event is a JSON object with one-letter keys (cjson writes it, in Lua, for
every PUBLISH of the cluster: short keys keep the sequence cheap to read for every
process). `parse` is the one place that reads those keys; everything else reads the
fields below. docs/cluster.md says what each event does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .sequence import Position, parse_position

Socket = tuple[str, str]  # (server, sid)


@dataclass(frozen=True)
class Event:
    seq: int  # its number: events and the messages between them form one sequence
    server: str  # the process that published it (for `Down`, the one declared dead)


@dataclass(frozen=True)
class Up(Event):
    """A process joins, or rejoins (after a lost subscription, or being declared dead)."""

    rejoin: bool  # it was not subscribed: it publishes `ready` once it is
    restored: tuple[tuple[str, str], ...]  # (sid, uid) of its sockets put back in Redis
    started: tuple[str, ...]  # users whose drains begin here (their sockets were nowhere)


@dataclass(frozen=True)
class On(Event):
    """A socket identified."""

    sid: str
    uid: str
    evicted: tuple[Socket, ...]  # sockets of the user closed for `user_conn_limit`
    first: bool  # the user had no socket: a drain begins here


@dataclass(frozen=True)
class Off(Event):
    """A socket left."""

    sid: str
    uid: str
    giving_back: bool  # its process gives back what only it held, then says `returned`


@dataclass(frozen=True)
class Down(Event):
    """`server` was declared dead (its sockets are gone from the view)."""


@dataclass(frozen=True)
class Copy(Event):
    """What a drain sent, for the user's sockets on the other processes; or, `to` one
    socket that joined, what the sender held for the user (its replay)."""

    uid: str
    over: bool  # the drain is over: the live messages held meanwhile go now
    to: str  # the one socket it is for (one that joined), or "" for all
    messages: tuple[str, ...]  # stored envelopes


@dataclass(frozen=True)
class Mark(Event):
    """An event of the `mark` script: it names users, and starts their drains."""

    uids: tuple[str, ...]
    started: tuple[str, ...]  # those of `uids` (or others) whose drains begin here


@dataclass(frozen=True)
class Ping(Mark):
    read: int  # `server` has handled every message before this event


@dataclass(frozen=True)
class Ending(Mark):
    """The drains of `uids` found their queues empty: live from here."""


@dataclass(frozen=True)
class Sealed(Mark):
    before: int  # `server`, the owner, queued every message for `uids` before this event


@dataclass(frozen=True)
class Returned(Mark):
    off: int  # the `off` whose socket's messages `server` gave back


@dataclass(frozen=True)
class Ready(Mark):
    since: Position  # the last message it had read before its window (or its `up`)


@dataclass(frozen=True)
class Redone(Mark):
    joined: str  # whose window `server` redid


@dataclass(frozen=True)
class Recovered(Mark):
    dead: str  # the dead process whose work `server` redid


def _strings(value: Any) -> tuple[str, ...]:
    # cjson writes an empty Lua table as {}, not [].
    return tuple(value) if isinstance(value, list) else ()


def _pair(text: str) -> tuple[str, str]:
    """"server sid" (a socket), or "sid uid" (a socket put back)."""
    first, _, second = text.partition(" ")
    return first, second


def parse(data: bytes | str) -> Event:
    """The event a script published; ValueError (or KeyError) if it is not one."""
    raw = json.loads(data)
    kind, seq, server = raw["t"], int(raw["g"]), str(raw["s"])
    if kind == "on":
        return On(seq, server, raw["c"], raw["u"], tuple(map(_pair, _strings(raw["x"]))), bool(raw["d"]))
    if kind == "off":
        return Off(seq, server, raw["c"], raw["u"], bool(raw["r"]))
    if kind == "up":
        return Up(seq, server, bool(raw.get("r", 1)), tuple(map(_pair, _strings(raw.get("k")))),
                  _strings(raw.get("w")))
    if kind == "down":
        return Down(seq, server)
    if kind == "copy":
        return Copy(seq, server, _strings(raw["u"])[0], bool(raw["f"]), raw["c"], _strings(raw["m"]))
    mark = _MARKS.get(kind)
    if mark is None:
        raise ValueError(f"unknown cluster event {kind!r}")
    uids, started, ref = _strings(raw["u"]), _strings(raw["w"]), str(raw["e"])
    if mark is Ending:
        return Ending(seq, server, uids, started)
    if mark is Ready:
        return Ready(seq, server, uids, started, parse_position(ref))
    if mark in (Redone, Recovered):
        return mark(seq, server, uids, started, ref)
    return mark(seq, server, uids, started, int(ref))


_MARKS: dict[str, type[Mark]] = {
    "ping": Ping, "ending": Ending, "sealed": Sealed, "returned": Returned, "ready": Ready,
    "redone": Redone, "recovered": Recovered,
}
