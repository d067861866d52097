"""The greenlet that blocks on Redis pub/sub and hands each message to the dispatcher."""

from __future__ import annotations

import fcntl
import logging
import termios
import threading
import time
from array import array
from collections.abc import Callable

import redis

from . import names

log = logging.getLogger("rm_flask")

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0
MAX_BATCH = 500  # messages handled together at most, to bound latency and memory
# Put in a batch where the apps' channels' subscription took effect: no channel has this
# name (we match `rm.*`), and the messages after it are the first we receive.
SUBSCRIBED_HERE = ""


class Listener:
    """PSUBSCRIBE `rm.*`, deliver, and come back by itself after Redis goes away.

    It also follows `rm:cluster`, the other servers' events, in the same sequence; once
    subscribed it calls `on_subscribed` (which announces this server) before reading on,
    and subscribes to the apps' channels when told to (`listen_to_messages`).

    Liveness is proven end to end: the service publishes a ping event now and then, and
    `pong()` records when it came back through the subscription. A
    subscription that delivers nothing at all, not even our pings, is closed, which sends
    `run` round its reconnect loop. A busy one is only late: its pings queue behind the
    apps' messages, and closing it would throw away everything Redis holds for us.
    """

    def __init__(
        self,
        client: redis.Redis,
        on_messages: Callable[[list[tuple[str, bytes]]], None],
        on_subscribed: Callable[[], None],
        on_reconnect: Callable[[], None] | None = None,
        on_listening: Callable[[], None] = lambda: None,
    ) -> None:
        self.client = client
        self.on_messages = on_messages
        self.on_subscribed = on_subscribed
        self.on_reconnect = on_reconnect
        self.on_listening = on_listening  # subscribed to the apps' channels
        self._listening_to_messages = False
        self.subscribed = False
        self.last_pong = 0.0
        self.last_received = 0.0
        self.stopped = threading.Event()
        self._pubsub: redis.client.PubSub | None = None
        self._connections = 0
        self._down_since: float | None = None  # when the subscription was lost, if it is
        self._handling = False  # routing what it read
        self.finished = threading.Event()  # `run` has returned

    def run(self) -> None:
        try:
            self._run()
        finally:
            self.finished.set()

    def _run(self) -> None:
        backoff = BACKOFF_FIRST
        while not self.stopped.is_set():
            pubsub = self.client.pubsub()
            self._pubsub = pubsub
            try:
                # The cluster's channel only: once it is confirmed we announce
                # ourselves, and the apps' channels follow once we have read that
                # (`listen_to_messages`), so no message reaches us before our view.
                pubsub.subscribe(names.CLUSTER_CHANNEL)
                self._listening_to_messages = False
                for message in pubsub.listen():
                    batch: list[tuple[str, bytes]] = []
                    try:
                        if self._take(message, batch):
                            backoff = BACKOFF_FIRST
                        # Take what else Redis already sent along with it, so that the
                        # batch shares its round trips (more under load, one message when
                        # quiet). Not get_message(timeout=0): given half a reply, it times
                        # out reading the rest and the connection, with its backlog, is lost.
                        while len(batch) < MAX_BATCH and pubsub.connection.can_read(timeout=0):
                            response = pubsub.parse_response(block=True)
                            more = pubsub.handle_message(response) if response else None
                            if more is not None and self._take(more, batch):
                                backoff = BACKOFF_FIRST
                    finally:
                        # What was read is ours to deliver, even if the connection then
                        # broke.
                        if batch:
                            self._handling = True
                            try:
                                self.on_messages(batch)
                            finally:
                                self._handling = False
                    # Stopping: go on reading until Redis has confirmed the unsubscribe
                    # (`listen` ends then); what it sent before that reply is ours.
                    if self.stopped.is_set() and not pubsub.subscribed:
                        break
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                if self.subscribed or self._down_since is None:
                    log.error("Lost the Redis subscription (%s); reconnecting", exc)
                    self._down_since = time.monotonic()
                self.subscribed = False
            except Exception:
                log.exception("Redis listener failed; reconnecting")
                self.subscribed = False
                self._down_since = self._down_since or time.monotonic()
            finally:
                try:
                    pubsub.close()
                except Exception:  # the connection is already gone
                    pass
            if not self.stopped.is_set():
                self.stopped.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _take(self, message: dict, batch: list[tuple[str, bytes]]) -> bool:
        """Sort one pub/sub message; True when it completes a (re)subscription."""
        self.last_received = time.monotonic()
        kind = message["type"]
        if kind == "pmessage":
            batch.append((names.decode(message["channel"]), message["data"]))
        elif kind == "message":
            batch.append((names.CLUSTER_CHANNEL, message["data"]))
        elif kind == "subscribe":
            self.on_subscribed()
        elif kind == "psubscribe":
            batch.append((SUBSCRIBED_HERE, b""))
            self._on_subscribed(self._down_since)
            self._down_since = None
            self.on_listening()
            return True
        return False

    def listen_to_messages(self) -> None:
        """Our view is loaded: subscribe to the apps' channels (from the listener's own
        greenlet, which reads the reply). If we are already (a rejoin after being
        declared dead, say), say so at once."""
        pubsub = self._pubsub
        if pubsub is None:
            return
        if self._listening_to_messages:
            self.on_listening()
            return
        self._listening_to_messages = True
        pubsub.psubscribe(names.PATTERN)

    def _on_subscribed(self, down_since: float | None) -> None:
        self.subscribed = True
        self.last_pong = self.last_received = time.monotonic()
        self._connections += 1
        if down_since is not None:
            log.warning("Redis subscription restored after %.1fs", time.monotonic() - down_since)
        if self._connections > 1 and self.on_reconnect:
            self.on_reconnect()

    def pong(self) -> None:
        """Our ping came back through the subscription."""
        self.last_pong = time.monotonic()

    def busy(self) -> bool:
        """Is there something we have not read yet? Then the subscription is not stuck,
        we are slow (thousands of sockets identifying at once, say): replacing it would
        throw away everything Redis holds for us."""
        if self._handling:
            return True
        pubsub = self._pubsub
        sock = getattr(pubsub.connection, "_sock", None) if pubsub is not None else None
        if sock is None:
            return False
        waiting = array("i", [0])
        try:
            fcntl.ioctl(sock.fileno(), termios.FIONREAD, waiting)  # bytes in the kernel's buffer
        except (OSError, ValueError):
            return False
        return waiting[0] > 0

    def kick(self) -> None:
        """Drop a subscription that stopped delivering, so that `run` makes a new one."""
        pubsub = self._pubsub
        if pubsub is not None and pubsub.connection is not None:
            log.error("Redis subscription delivered nothing, not even our pings; reconnecting")
            self.subscribed = False
            pubsub.connection.disconnect()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop for good, without losing what Redis already sent us.

        Unsubscribing first: Redis counts us as a receiver until it handles that, and
        everything it sent before its reply is read and routed; `listen` ends with the
        reply. Only if that does not come in time is the connection cut.
        """
        self.stopped.set()
        pubsub = self._pubsub
        if pubsub is not None and self.subscribed:
            try:
                pubsub.unsubscribe()
                pubsub.punsubscribe()
                if self.finished.wait(timeout):
                    return
            except Exception:
                log.warning("Could not unsubscribe cleanly; closing the subscription")
        if pubsub is not None and pubsub.connection is not None:
            self.subscribed = False
            pubsub.connection.disconnect()
