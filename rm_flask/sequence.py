"""Where a message stands in the sequence every process reads, and the id that says so.

All processes read the same PUBLISHes and cluster events in the same order. A message's
place is the event before it and its count since: `era.event.count` in hex is its id, the
same in every process that read it (`store.py` reads positions back from ids in Lua).
The era changes when Redis loses its data and event numbers start again.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable
from typing import Any

from . import envelope, inbox
from .envelope import Message

# The event before a message, and its count since. (E, 0) is the event itself, before any
# message after it.
Position = tuple[int, int]


def message_id(era: str, seq: int, count: int) -> str:
    return f"{era}.{seq:x}.{count:x}"


def tail_count(server: str, n: int) -> int:
    """A count for the `n`th message a process read after subscribing and before the next
    event, when it does not know how many came before it in that segment: past every
    count a segment reaches, and different for every process."""
    return (1 << 48) | ((zlib.crc32(server.encode()) & 0xFFFFFF) << 20) | n


def position_text(position: Position) -> str:
    """A position as an event carries it (`ready`'s `e`)."""
    return f"{position[0]} {position[1]}"


def in_sequence(messages: Iterable[Message], era: str) -> list[Message]:
    """`messages` once per id, those of `era` in the order of the sequence (the place
    their id names), and inbox messages among themselves in the stream's order (as the
    queue's scripts order them). The others (from an era before, or another program's,
    whose ids name no place) keep the places they came in, as do both kinds to each
    other: how they stand is unknown."""
    unique: dict[str, Message] = {}
    for msg in messages:
        unique.setdefault(msg.id, msg)
    out = list(unique.values())
    places: dict[str, Position] = {}
    entries: dict[str, Position] = {}
    for msg in out:
        parts = msg.id.split(".")
        if len(parts) == 3 and parts[0] == era:
            try:
                places[msg.id] = int(parts[1], 16), int(parts[2], 16)
            except ValueError:
                pass
        elif (entry := inbox.entry_order(msg.id)) is not None:
            entries[msg.id] = entry
    for order in (places, entries):
        slots = [at for at, msg in enumerate(out) if msg.id in order]
        ordered = sorted((out[at] for at in slots), key=lambda msg: order[msg.id])
        for at, msg in zip(slots, ordered, strict=True):
            out[at] = msg
    return out


def parse_position(text: str | int) -> Position:
    seq, _, count = str(text).partition(" ")
    return int(seq), int(count or 0)


class Incoming:
    """A PUBLISH as read, with its place in the sequence; its envelope (and id) is made only
    if a socket or queue here needs it: with several servers, most messages are for
    users of another, and reading their channel is all this one does."""

    __slots__ = ("channel", "data", "era", "seq", "count", "received_ms", "msg_id", "_message")

    def __init__(self, channel: str, data: bytes, era: str, seq: int, count: int,
                 received_ms: int | None = None, msg_id: str | None = None) -> None:
        self.channel = channel
        self.data = data
        self.era, self.seq, self.count = era, seq, count
        self.received_ms = int(time.time() * 1000) if received_ms is None else received_ms
        self.msg_id = msg_id  # given: an inbox entry's (`inbox.envelope_id`), not its place
        self._message: Message | None = None

    def fields(self) -> tuple[Any, ...]:
        """What `Incoming(*fields)` makes the same message of."""
        return (self.channel, self.data, self.era, self.seq, self.count, self.received_ms, self.msg_id)

    def message(self) -> Message:
        if self._message is None:
            msg_id = self.msg_id or message_id(self.era, self.seq, self.count)
            self._message = Message(envelope.make(self.channel, self.data, self.received_ms, msg_id))
        return self._message
