"""The inbox (SPEC §9): messages that wait in a Redis stream while no server runs.

Apps add entries (`publish`, `python -m rm_flask publish`, or XADD with the fields
`channel`, `data` and an optional `key`). One server at a time, the holder of a lease,
reads them through the consumer group and forwards each into the sequence every server
reads (`forward.lua`), framed with its entry id. From there an entry is routed like any
PUBLISH (users, groups, queues, several processes), with an envelope id made from the
entry id, so that a redo is recognisable. An entry is acknowledged once every server
in the view at its place in the sequence has routed its part, queued or written
(`routed.lua`): what one of them only holds in memory (behind a drain, for a socket
leaving) does not count. An entry not acknowledged within `REDO_AFTER` seconds (a
server died or was paused with its part undone, the reader died before it was read back,
no server was subscribed) is forwarded again, with the same id.

One reader keeps the stream's order: entries are forwarded in it, and read back by every
server in that same order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import redis

from . import lua, names
from .metrics import Metrics

log = logging.getLogger("rm_flask")

LEASE = 5.0  # seconds the reader's lease lasts unless renewed (each pass renews it)
REDO_AFTER = 10.0  # seconds an entry may stay forwarded and unacknowledged
TAKEOVER_IDLE = 1.0  # seconds: entries read by the last reader, idle this long, are redone at once
BATCH = 100  # entries read, and forwarded in one script call, at a time
BLOCK = 0.5  # seconds a read waits for new entries
TRIM_EVERY = 5.0  # seconds between trims of handled entries
COUNT_UP_TO = 100  # unread entries counted for /metrics and /healthz at most (each is read)
# Seconds an entry's record of the servers that routed it outlives the last of them: it is
# forwarded again each `REDO_AFTER` while one is missing, which renews it.
ROUTED_TTL = 6 * REDO_AFTER
_FORWARD = lua.script("forward")
_ROUTED = lua.script("routed")


class InvalidChannel(ValueError):
    """Not a channel RedMessenger delivers (`rm.users.UID`, `rm.channels.CID`, `rm.groups.CID`)."""


def envelope_id(entry_id: str) -> str:
    """The envelope id of an inbox message. No dots: the queue's scripts read a place in
    the sequence from ours, and a redo of an entry is forwarded at another place."""
    return f"i-{entry_id}"


def entry_order(msg_id: str) -> tuple[int, int] | None:
    """Where an inbox message's entry stands in the stream, from its envelope id; None
    for any other id. Per user, inbox messages keep this order (SPEC §9)."""
    ms, sep, rest = msg_id.removeprefix("i-").partition("-")
    if not (sep and msg_id.startswith("i-") and ms.isdigit() and rest.isdigit()):
        return None
    return int(ms), int(rest)


def unframe(raw: bytes) -> tuple[str, str, bytes] | None:
    """(entry id, channel, data) of a forwarded entry; None if `raw` is not one."""
    entry_id, sep, rest = raw.partition(b"\n")
    channel, sep2, data = rest.partition(b"\n")
    if not (sep and sep2 and entry_id):
        return None
    return entry_id.decode("ascii", "replace"), names.decode(channel), data


def publish(client: redis.Redis, channel: str, data: bytes | str, key: str | None = None) -> str:
    """Add a message for `channel` to the inbox; returns the envelope id it will carry.

    The message waits in Redis until a RedMessenger server has routed it, even if none
    runs now. Two messages with the same `key` within `inbox_key_ttl` are one.
    """
    if names.parse_channel(channel) is None:
        raise InvalidChannel(
            f"channel {channel!r} is invalid: expected rm.users.UID, rm.channels.CID or rm.groups.CID, "
            f"the id 1-{names.MAX_ID_LENGTH} characters with no ':' or whitespace")
    fields: dict[str, Any] = {"channel": channel, "data": data}
    if key is not None:
        if not isinstance(key, str) or not key:
            raise ValueError("key must be a non-empty string")
        fields["key"] = key
    entry = client.xadd(names.INBOX_KEY, fields)
    return envelope_id(entry.decode() if isinstance(entry, bytes) else entry)


class Inbox:
    """This server's part: reading and forwarding while it holds the lease, acknowledging
    what it routed, and the inbox's numbers."""

    def __init__(self, client: redis.Redis, server_id: str, metrics: Metrics,
                 key_ttl: int = 86400, max_payload: int = 1024 * 1024) -> None:
        self.client, self.me, self.metrics = client, server_id, metrics
        self.key_ttl, self.max_payload = key_ttl, max_payload
        self._forward = client.register_script(_FORWARD)
        self._routed = client.register_script(_ROUTED)
        self.reading = False  # we hold the lease
        self._group_ready = False
        self._taken_over = False  # the lease just came to us
        # When our subscription came back with no other server to have heard what we
        # forwarded before (see `resubscribed`); 0.0: it has not been lost since.
        self._heard_from = 0.0
        # Read, and not forwarded yet: no server was subscribed to hear them.
        self._unforwarded: list[tuple[bytes, dict[bytes, bytes]]] = []
        self._trimmed_at = 0.0
        self._seen: tuple[int, float | None] | None = None  # (unhandled, the oldest's time) at the last look
        metrics.inbox_unhandled.set_function(lambda: (self.stats() or {}).get("unhandled", 0))
        metrics.inbox_oldest.set_function(lambda: (self.stats() or {}).get("oldest_s", 0.0))

    def run(self, stopped: threading.Event, listening: Callable[[], bool]) -> None:
        """Read while we hold the lease and `listening()` (our subscription is live):
        a server that cannot hear what it forwards leaves the reading to another."""
        while not stopped.is_set():
            try:
                if not listening():
                    self._release()
                    stopped.wait(BLOCK)
                    continue
                if not self._lease():
                    stopped.wait(1.0)
                    continue
                self._pass()
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis lost its data, or the stream was deleted
                    self._group_ready = False
                else:
                    log.warning("Inbox: Redis refused a read: %s", exc)
                    stopped.wait(1.0)
            except redis.RedisError as exc:
                log.debug("Inbox: Redis unavailable: %s", exc)
                stopped.wait(1.0)
            except Exception:
                log.exception("Inbox: the reader failed; starting again")
                stopped.wait(1.0)
        self._release()

    def _lease(self) -> bool:
        """Take or renew the lease. Not atomic, and need not be: `forward.lua` checks it
        in the step that forwards, so a reader that lost it forwards nothing."""
        if self.client.set(names.INBOX_READER_KEY, self.me, nx=True, px=int(LEASE * 1000)):
            log.info("Inbox: this server reads %s", names.INBOX_KEY)
            self._taken_over = True
        elif self.client.get(names.INBOX_READER_KEY) == self.me.encode():
            self.client.pexpire(names.INBOX_READER_KEY, int(LEASE * 1000))
        else:
            self.reading = False
            return False
        self.reading = True
        return True

    def _release(self) -> None:
        self.reading, self._unforwarded = False, []
        try:
            if self.client.get(names.INBOX_READER_KEY) == self.me.encode():
                self.client.delete(names.INBOX_READER_KEY)
        except redis.RedisError:
            pass  # it lapses by itself

    def _pass(self) -> None:
        if not self._group_ready:
            try:
                # From the stream's start: entries added before any server ran are read.
                self.client.xgroup_create(names.INBOX_KEY, names.INBOX_GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._group_ready = True
        # First what no server was subscribed to hear last time, as it was held back
        # (nothing newer goes before it).
        if self._unforwarded:
            self.forward(self._unforwarded)
            if self._unforwarded:
                time.sleep(BLOCK)
                return
        # Then what was read and never acknowledged, in the stream's order. Just after
        # the lease came to us, all that the last reader left (it can forward nothing
        # more, and what it forwarded was routed long since): it goes before anything
        # newer, or its users would get newer entries first. Otherwise what stayed
        # unacknowledged for `REDO_AFTER` (a server that routed it died before saying so).
        idle = TAKEOVER_IDLE if self._taken_over else REDO_AFTER
        for stale in self._stale(int(idle * 1000)):
            log.warning("Inbox: forwarding %d entries again (unacknowledged for %ss)", len(stale), idle)
            self.forward(stale)
            if self._unforwarded:
                return
        self._taken_over = False
        for _, entries in self.client.xreadgroup(names.INBOX_GROUP, self.me, {names.INBOX_KEY: ">"},
                                                 count=BATCH, block=int(BLOCK * 1000)) or []:
            self.forward(entries)
        if time.monotonic() - self._trimmed_at > TRIM_EVERY:
            self._trimmed_at = time.monotonic()
            self.trim()

    def _stale(self, idle_ms: int) -> Iterator[list[tuple[bytes, dict[bytes, bytes]]]]:
        """Batches of the entries read and unacknowledged for `idle_ms`, claimed for us,
        in the stream's order, while we hold the lease."""
        cursor = "0-0"
        while self.reading:
            # (Redis 7 adds a third element to the reply: the ids of entries deleted meanwhile.)
            reply = self.client.xautoclaim(names.INBOX_KEY, names.INBOX_GROUP, self.me, idle_ms, cursor,
                                           count=BATCH)
            cursor = _text(reply[0])
            if reply[1]:
                yield reply[1]
            if cursor == "0-0":
                return

    def resubscribed(self, alone: bool) -> None:
        """Our subscription is back (said as it is, before the listener reads on). If
        nobody else may have heard what we forwarded just before it was cut (we were
        alone, or Redis restarted), Redis may have answered for it and sent it to no one:
        it goes again before anything else is forwarded (`_forward_unheard`), or its
        users would get newer entries first. Otherwise the others heard it, and they
        redo our part."""
        if alone:
            self._heard_from = time.monotonic()

    def _forward_unheard(self) -> set[bytes]:
        """Forward again every entry read before our subscription came back and not
        acknowledged since, in the stream's order; returns their ids."""
        since, self._heard_from = self._heard_from, 0.0
        claimed = [entry for batch in self._stale(int((time.monotonic() - since) * 1000)) for entry in batch]
        if claimed:
            log.warning("Inbox: forwarding %d entries again (forwarded as our subscription was cut)",
                        len(claimed))
            self.forward(claimed)
        return {entry_id for entry_id, _ in claimed}

    def forward(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Forward entries into the sequence, in order; those no server could route are
        acknowledged, logged and counted, never retried. What no server was subscribed
        to hear waits for the next pass (`_unforwarded`), ahead of anything newer."""
        if self._heard_from:
            again = self._forward_unheard()
            # What of those went unheard again waits, and everything else behind it.
            left, self._unforwarded = self._unforwarded, []
            entries = left + [entry for entry in entries if entry[0] not in again]
            if left:
                self._unforwarded = entries
                return
        args: list[Any] = []
        valid: list[tuple[bytes, dict[bytes, bytes]]] = []
        bad: list[bytes] = []
        for entry_id, fields in entries:
            problem = self._problem(fields or {})
            if problem is not None:
                log.warning("Inbox: dropping entry %s: %s", entry_id.decode(), problem[1])
                self.metrics.inbox_invalid.labels(problem[0]).inc()
                bad.append(entry_id)
                continue
            valid.append((entry_id, fields))
            args += [entry_id, fields[b"channel"], fields[b"data"], fields.get(b"key", b"")]
        if bad:
            self.client.xack(names.INBOX_KEY, names.INBOX_GROUP, *bad)
        if not args:
            return
        reply = self._forward(
            keys=[names.INBOX_READER_KEY, names.INBOX_KEY, names.INBOX_CHANNEL],
            args=[self.me, self.key_ttl, names.inbox_dedupe_key(""), names.INBOX_GROUP, *args])
        if reply == -1:
            log.info("Inbox: the lease went to another server; it reads on")
            self.reading = False
            self._unforwarded = []
            return
        done, repeats = reply
        self.metrics.inbox_forwarded.inc(done - repeats)
        self.metrics.inbox_repeats.inc(repeats)
        self._unforwarded = valid[done:]
        if self._unforwarded:
            log.warning("Inbox: no server subscribed to hear %d entries; they wait", len(self._unforwarded))

    def _problem(self, fields: dict[bytes, bytes]) -> tuple[str, str] | None:
        channel, data = fields.get(b"channel"), fields.get(b"data")
        if channel is None or data is None:
            has = ", ".join(sorted(k.decode("ascii", "replace") for k in fields)) or "none"
            return "fields", f"it needs the fields channel and data (has {has})"
        if names.parse_channel(names.decode(channel)) is None:
            return "channel", f"{names.printable(names.decode(channel))} is not a user or group channel"
        if len(data) > self.max_payload:
            return "too_large", f"{len(data)} bytes is over max_payload ({self.max_payload})"
        return None

    def routed(self, server: str, entry_ids: list[str], servers: Sequence[str]) -> None:
        """`server` (this one, or one whose part we redid) routed its part of these
        entries (queued or written): the last of `servers` (the view at their place in
        the sequence) to do so acknowledges them. No `servers`: only noted, the others
        decide (our part is theirs to redo)."""
        try:
            self._routed(keys=[names.INBOX_KEY],
                         args=[names.INBOX_GROUP, server, int(ROUTED_TTL * 1000), names.inbox_routed_key(""),
                               len(servers), *servers, *entry_ids])
        except redis.RedisError as exc:
            # Forwarded again later, with the same id: a duplicate, not a loss.
            log.warning("Inbox: could not note %d entries as routed: %s", len(entry_ids), exc)

    def trim(self) -> None:
        """Drop handled entries: everything before the oldest one read and not yet
        acknowledged, or, if none is, before the last one read (it stays: it carries the
        stream's last id). The stream keeps only what may still have to be sent; what was
        sent is in the queues or was delivered, and the log says so.

        Both bounds only move forward, and an entry added meanwhile comes after both: a
        trim that read them a moment ago drops nothing unread (a bound taken from the
        stream's length, or its last entry, would drop what was added in between)."""
        try:
            groups = self.client.xinfo_groups(names.INBOX_KEY)
        except redis.ResponseError:  # no stream yet
            return
        group = next((g for g in groups if _text(g["name"]) == names.INBOX_GROUP), None)
        if group is None:
            return
        pending = self.client.xpending(names.INBOX_KEY, names.INBOX_GROUP)
        bound = _text(pending["min"]) if pending["pending"] else _text(group["last-delivered-id"])
        self.client.xtrim(names.INBOX_KEY, minid=bound, approximate=False)

    def _backlog(self, unread_up_to: int) -> tuple[int, str | None]:
        """(entries not yet handled, the id of the oldest): those read and unacknowledged,
        and those not read yet, counted up to `unread_up_to` (Redis 6.2 tells no `lag`,
        and counting them means reading them: only when the group is behind)."""
        try:
            stream = self.client.xinfo_stream(names.INBOX_KEY)
            groups = self.client.xinfo_groups(names.INBOX_KEY)
        except redis.ResponseError:  # no stream yet
            return 0, None
        group = next((g for g in groups if _text(g["name"]) == names.INBOX_GROUP), None)
        pending = self.client.xpending(names.INBOX_KEY, names.INBOX_GROUP) if group else None
        oldest = _text(pending["min"]) if pending and pending["pending"] else None
        count = pending["pending"] if pending else 0
        last = _text(group["last-delivered-id"]) if group else None
        if last != _text(stream["last-generated-id"]):
            unread = self.client.xrange(names.INBOX_KEY, min=f"({last}" if last else "-", count=unread_up_to)
            count += len(unread)
            if oldest is None and unread:
                oldest = _text(unread[0][0])
        return count, oldest

    def look(self) -> dict[str, Any]:
        """Read the backlog from Redis, for `stats` (housekeeping does, every second)."""
        unhandled, oldest = self._backlog(COUNT_UP_TO)
        self._seen = (unhandled, int(oldest.split("-")[0]) / 1000 if oldest else None)
        return self.stats() or {}

    def stats(self) -> dict[str, Any] | None:
        """At the last `look` (None before the first): entries not yet handled (the unread
        ones counted up to `COUNT_UP_TO`), the age in seconds of the oldest of them now,
        and whether this server reads. /metrics and /healthz show this, and so never wait
        on a Redis that is slow to answer."""
        if self._seen is None:
            return None
        unhandled, oldest_at = self._seen
        age = max(0.0, time.time() - oldest_at) if oldest_at else 0.0
        return {"unhandled": unhandled, "oldest_s": round(age, 3), "read_here": self.reading}


class RoutedHere:
    """Inbox entries this server routed its part of, for `ROUTED_TTL` after the last time.

    An entry is forwarded again while another server's part is missing (it died, or was
    paused): routed here a second time, ours would be queued twice, or sent again after
    newer messages. Forgotten when our subscription is lost: Redis may have restarted
    without our last writes, and then ours must be done again.
    """

    def __init__(self, horizon: float = ROUTED_TTL) -> None:
        self.horizon = horizon
        self._at: OrderedDict[str, float] = OrderedDict()  # entry id -> when; oldest first

    def add(self, entry_ids: Iterable[str]) -> None:
        now = time.monotonic()
        at = self._at
        for entry_id in entry_ids:
            at[entry_id] = now
            at.move_to_end(entry_id)
        cutoff = now - self.horizon
        while at and next(iter(at.values())) < cutoff:
            at.popitem(last=False)

    def __contains__(self, entry_id: str) -> bool:
        return entry_id in self._at

    def forget(self) -> None:
        self._at.clear()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
