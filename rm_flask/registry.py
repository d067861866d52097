"""Who is connected: sockets, the users they identified as, and what each user awaits.

The registry is shared by the Redis listener and every socket's handlers, so all of its
state changes under locks. A user's lock (one of a fixed set of stripes, so that a user
who is offline still has one) orders everything that concerns that user: queueing a
message for them, draining their queue, acknowledging and recommitting.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum

from .envelope import Message

_STRIPES = 1024


@dataclass(eq=False)
class Conn:
    """One Socket.IO connection in our namespace."""

    sid: str
    address: str
    eio_sid: str | None = None  # the Engine.IO connection under it, whose buffer we watch
    connected_at: float = field(default_factory=time.monotonic)
    uid: str | None = None  # set once the socket is attached to its user
    requested: str | None = None  # the uid it identified as, from the identify reply on
    announced: str | None = None  # the uid every server was told this socket holds
    ack: bool = False  # its messages count as delivered once acknowledged, not once written
    # Acknowledges with `ack` events listing ids (SPEC §4 batch acks): its messages go
    # without a Socket.IO ack id.
    batch: bool = False
    closing: bool = False  # cut off (too slow): gets nothing more while its close completes
    # Joined while the user had sockets on other processes: each of those processes
    # replays to it what they hold unacknowledged (and what a drain there sent), all of
    # it older than this socket. Until every replay is in (or `REPLAY_WITHIN` passed, or
    # a process declared dead had its work redone), what is sent here waits in
    # `held_writes`, to go after it in sequence order, and
    # those processes' drain copies are skipped: their replays hold them.
    awaiting: set[str] = field(default_factory=set)
    awaiting_since: float = 0.0
    replayed: list[Message] = field(default_factory=list)
    held_writes: list[Message] = field(default_factory=list)


@dataclass(eq=False)
class Pending:
    """A message sent to ack-mode sockets and not yet acknowledged by any of them."""

    message: Message
    waiting: set[str]  # sids it was sent to that may still acknowledge it
    sent_at: float = field(default_factory=time.monotonic)


class Phase(Enum):
    """Where a user's drain stands on this process (docs/cluster.md, "A socket identifies")."""

    IDLE = "idle"  # live messages go straight to the user's sockets here
    # Our drain sends the queue, batch by batch; live messages are queued behind it.
    DRAINING = "draining"
    # Our drain found the queue empty and announced its end: live messages read since
    # are held until the last queued ones (those from before the end) are sent.
    ENDING = "ending"
    # Another process's drain of the user is ending: live messages are held here until
    # its last copy comes (or the drain moves here, which then sends the rest itself).
    FOLLOWING = "following"

    @property
    def runs(self) -> bool:
        """Our drain task is running."""
        return self in (Phase.DRAINING, Phase.ENDING)

    @property
    def holds(self) -> bool:
        """Live messages wait in `User.held`."""
        return self in (Phase.ENDING, Phase.FOLLOWING)


@dataclass(eq=False)
class User:
    uid: str
    conns: list[Conn] = field(default_factory=list)  # oldest first: conns[0] bubbles
    # Unacknowledged messages by id, in the order they were sent.
    pending: OrderedDict[str, Pending] = field(default_factory=OrderedDict)
    phase: Phase = Phase.IDLE
    # What the running drain sent: a socket that identifies meanwhile is sent it first.
    drain_log: list[Message] = field(default_factory=list)
    # Leaving sockets whose unacknowledged messages are on their way back to the queue.
    returning: int = 0
    drain_wakeup: threading.Event = field(default_factory=threading.Event)
    # Sockets gone here whose leaving the other servers have not read yet; meanwhile what
    # only they would have got is kept, to be given back with what they held.
    leaving: dict[str, list[Pending]] = field(default_factory=dict)
    leftover: list[Message] = field(default_factory=list)
    # Our drain stopped while ending (its sockets left): `leftover` holds what it held
    # back, and the queue may still hold older messages, from before its end.
    interrupted: bool = False
    # While the phase holds: live messages, until the last queued ones are sent (by this
    # process's drain, or as copies of another's).
    held: list[Message] = field(default_factory=list)
    end: tuple[int, str] | None = None  # the drain's `ending` event, and who certifies it

    def live(self) -> list[Conn]:
        """The sockets that still get messages, oldest first."""
        return [c for c in self.conns if not c.closing]

    # The phase's transitions (with the user's lock held).

    def begin_drain(self) -> None:
        """Our drain starts: also of a user whose drain, ending elsewhere, moved here."""
        self.phase = Phase.ENDING if self.phase is Phase.FOLLOWING else Phase.DRAINING

    def hold(self, end: tuple[int, str] | None) -> None:
        """A drain's end: ours (the queue was empty) or another process's (`end` read)."""
        self.phase = Phase.ENDING if self.phase.runs else Phase.FOLLOWING
        self.end = end

    def release(self) -> list[Message]:
        """The drain's last queued messages are sent: the held ones go, live from now."""
        held, self.held, self.end = self.held, [], None
        self.phase = Phase.DRAINING if self.phase.runs else Phase.IDLE
        return held

    def stop_drain(self) -> None:
        """Our drain stops (done, or its sockets here went): what it held is given back,
        unless a tab comes back first (`resume_ending`)."""
        self.drain_log = []
        if self.phase.holds:
            self.leftover.extend(self.held)
            self.held = []
            self.interrupted = self.phase is Phase.ENDING
            if not self.interrupted:
                self.end = None
        self.phase = Phase.IDLE

    def resume_ending(self) -> None:
        """A tab came back here before what our stopped drain held back was given back:
        the drain goes on from its end, holding that again, so that what the queue still
        holds from before the end reaches the tab first."""
        self.phase, self.interrupted = Phase.ENDING, False
        self.held, self.leftover = self.leftover, []

    def take_leftover(self) -> list[Message]:
        """What was kept to give back, taken to be given back now."""
        leftover, self.leftover, self.interrupted = self.leftover, [], False
        if self.phase is Phase.IDLE:
            self.end = None
        return leftover

    def stop_following(self) -> None:
        """Our last socket left while it followed another's drain: what it held goes back."""
        if self.phase is Phase.FOLLOWING:
            self.leftover.extend(self.held)
            self.held, self.end = [], None
            self.phase = Phase.IDLE


class ConnLimitError(Exception):
    """The server holds `conn_limit` connections already."""


class Registry:
    """Thread-safe map of sockets and users."""

    def __init__(self, conn_limit: int, user_conn_limit: int) -> None:
        self.conn_limit = conn_limit
        self.user_conn_limit = user_conn_limit
        self._lock = threading.RLock()
        self._stripes = [threading.RLock() for _ in range(_STRIPES)]
        self.conns: dict[str, Conn] = {}
        self.users: dict[str, User] = {}

    def user_lock(self, uid: str) -> threading.RLock:
        """The lock that orders all work for `uid`, online or not."""
        return self._stripes[zlib.crc32(uid.encode("utf-8", "surrogatepass")) % _STRIPES]

    ### Connections ###

    def connect(self, sid: str, address: str, eio_sid: str | None = None) -> Conn:
        with self._lock:
            if len(self.conns) >= self.conn_limit:
                raise ConnLimitError
            conn = self.conns[sid] = Conn(sid, address, eio_sid)
            return conn

    def get(self, sid: str) -> Conn | None:
        return self.conns.get(sid)

    def remove(self, sid: str) -> Conn | None:
        with self._lock:
            return self.conns.pop(sid, None)

    def count(self) -> int:
        return len(self.conns)

    def unidentified_before(self, deadline: float) -> list[Conn]:
        with self._lock:
            return [c for c in self.conns.values() if c.requested is None and c.connected_at < deadline]

    ### Users (call with the user's lock held) ###

    def user(self, uid: str) -> User | None:
        return self.users.get(uid)

    def join(self, conn: Conn, uid: str) -> User:
        """Attach `conn` to `uid`."""
        with self._lock:
            user = self.users.get(uid)
            if user is None:
                user = self.users[uid] = User(uid)
            conn.uid = uid
            user.conns.append(conn)
            return user

    def hold(self, uid: str) -> User:
        """The user, kept even while they have no socket here."""
        with self._lock:
            user = self.users.get(uid)
            if user is None:
                user = self.users[uid] = User(uid)
            return user

    def leave(self, conn: Conn) -> User | None:
        """Detach `conn` from its user; forget the user once nothing of theirs is left."""
        with self._lock:
            user = self.users.get(conn.uid) if conn.uid else None
            if user is None:
                return None
            if conn in user.conns:
                user.conns.remove(conn)
            conn.uid = None
            if self._idle(user):
                del self.users[user.uid]
            return user

    @staticmethod
    def _idle(user: User) -> bool:
        return not (user.conns or user.pending or user.phase is not Phase.IDLE or user.returning
                    or user.leaving or user.leftover)

    def forget_if_idle(self, user: User) -> None:
        with self._lock:
            if self._idle(user):
                if self.users.get(user.uid) is user:
                    del self.users[user.uid]
