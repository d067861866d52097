"""Socket.IO clients for the tests: python-socketio speaking to the real server."""

from __future__ import annotations

import fcntl
import random
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import engineio
import socketio
from socketio import packet

from .processes import wait_until

NAMESPACE = "/rm"


class _OrderedEngineIO(engineio.Client):
    """engineio's client runs each message's handler in a thread of its own, so handlers
    can see messages out of the order they arrived in; this one handles events and acks in
    order. (Not a DISCONNECT: its handler joins the read thread, so it cannot run on it.)"""

    def _trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        if event == "message" and args and isinstance(args[0], str) and args[0][:1] in ("2", "3"):
            kwargs["run_async"] = False
        return super()._trigger_event(event, *args, **kwargs)


class _Client(socketio.Client):
    """python-socketio's client always acknowledges; this one can hold acks back."""

    hold_ack: Any = None  # called with each outgoing ACK packet; True drops it
    sent_ack: Any = None  # called once an ACK packet is queued for writing

    def _engineio_client_class(self) -> type[engineio.Client]:
        return _OrderedEngineIO

    def _send_packet(self, pkt: Any) -> None:
        if pkt.packet_type == packet.ACK and self.hold_ack is not None and self.hold_ack(pkt):
            return
        super()._send_packet(pkt)
        if pkt.packet_type == packet.ACK and self.sent_ack is not None:
            self.sent_ack(pkt)


class RMClient:
    """One browser tab: connects, identifies, records every message and error it gets.

    In ack mode it acknowledges each message unless `auto_ack` is off (then it holds them,
    like a tab that stalls), and `ack_limit` makes it stop acknowledging after that many.
    Identified with `"ack": "batch"`, it acknowledges with `ack` events instead, as the JS
    client does: the ids of what it handled, every `BATCH_EVERY` seconds or `BATCH_IDS` ids.
    """

    BATCH_EVERY = 0.05
    BATCH_IDS = 100

    def __init__(self, url: str, namespace: str = NAMESPACE, auto_ack: bool = True,
                 ack_limit: int | None = None, transports: list[str] | None = None,
                 http_session: Any = None) -> None:
        self.url = url
        self.transports = transports or ["websocket"]  # ["polling"]: long-polling only
        self.namespace = namespace
        self.auto_ack = auto_ack
        self.ack_limit = ack_limit
        self.acked = 0
        self.messages: list[dict[str, Any]] = []
        self.arrived_at: list[float] = []  # when each of `messages` arrived (time.monotonic())
        self.acked_ids: dict[str, float] = {}  # envelope id -> when its ack was queued, before closing
        self.on_arrival: Any = None  # called with each envelope as it arrives, before its ack
        self.ended: str | None = None  # how the test ended it: "closed", "dropped", "vanished"
        self.vanished_at: float | None = None  # when it vanished (time.monotonic())
        self.closing = False
        self.errors: list[dict[str, Any]] = []
        self.disconnected = threading.Event()
        self.batch = False  # acknowledges with `ack` events (set by identifying so)
        self._unacked: list[str] = []  # batch mode: ids handled, not sent in an `ack` yet
        self._batch_due = threading.Event()
        self._lock = threading.Lock()
        # http_session: the requests.Session that long-polling uses (None: its own)
        self.sio = _Client(reconnection=False, http_session=http_session)
        self.sio.hold_ack = self._hold_ack
        self.sio.sent_ack = self._sent_ack
        self.sio.on("message", self._on_message, namespace=namespace)
        self.sio.on("rm_error", self._on_error, namespace=namespace)
        self.sio.on("disconnect", lambda *a: self.disconnected.set(), namespace=namespace)

    def _on_message(self, envelope: dict[str, Any]) -> None:
        if self.on_arrival is not None:
            self.on_arrival(envelope)
        with self._lock:
            self.messages.append(envelope)
            self.arrived_at.append(time.monotonic())
            if self.batch and self._may_ack():
                self.acked += 1
                self._unacked.append(envelope.get("id"))
                if len(self._unacked) >= self.BATCH_IDS:
                    self._batch_due.set()

    def _may_ack(self) -> bool:
        return self.auto_ack and (self.ack_limit is None or self.acked < self.ack_limit)

    def _batch_acks(self) -> None:
        """Batch mode: send what was handled, every BATCH_EVERY or at BATCH_IDS ids."""
        while not self.disconnected.is_set():
            self._batch_due.wait(self.BATCH_EVERY)
            self._batch_due.clear()
            with self._lock:
                ids, self._unacked = self._unacked, []
                closing = self.closing
            if not ids or closing:
                continue
            try:
                self.sio.emit("ack", ids, namespace=self.namespace)
            except Exception:
                return
            now = time.monotonic()
            with self._lock:
                for msg_id in ids:
                    self.acked_ids[msg_id] = now

    def _hold_ack(self, pkt: Any) -> bool:
        with self._lock:
            if not self._may_ack():
                return True
            self.acked += 1
            return False

    def _sent_ack(self, pkt: Any) -> None:
        # Events and their acks are handled in order, one at a time (_OrderedEngineIO): the
        # ack just queued is the last message's. Only acks queued before the tab began to
        # close count as sure to have reached the server (`flush` writes them first); one
        # queued after may go out behind the goodbye.
        with self._lock:
            if self.messages and not self.closing:
                self.acked_ids[self.messages[-1].get("id")] = time.monotonic()

    def _on_error(self, data: dict[str, Any]) -> None:
        self.errors.append(data)

    def connect(self, timeout: float = 10) -> RMClient:
        self.sio.connect(self.url, namespaces=[self.namespace], transports=self.transports,
                         wait_timeout=timeout)
        return self

    def identify(self, identifier: Any, timeout: float = 10) -> Any:
        self._mode(identifier)
        return self.sio.call("identifier", identifier, namespace=self.namespace, timeout=timeout)

    def emit_identify(self, identifier: Any) -> None:
        self._mode(identifier)
        self.sio.emit("identifier", identifier, namespace=self.namespace)

    def _mode(self, identifier: Any) -> None:
        batch = isinstance(identifier, dict) and identifier.get("ack") == "batch"
        if batch and not self.batch:
            threading.Thread(target=self._batch_acks, daemon=True).start()
        self.batch = batch

    def received(self) -> list[tuple[float, dict[str, Any]]]:
        """(when it arrived, envelope) for every message, in arrival order."""
        with self._lock:
            return list(zip(self.arrived_at, self.messages, strict=True))

    def payloads(self) -> list[str]:
        with self._lock:
            return [m["payload"] for m in self.messages]

    def first_payloads(self) -> list[str]:
        """Each payload once, in the order of its first arrival (what the user saw)."""
        return list(dict.fromkeys(self.payloads()))

    def wait_for(self, count: int, timeout: float = 20) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.messages) >= count, timeout,
                   lambda: f"{count} messages (have {len(self.messages)})")
        return list(self.messages)

    def flush(self, timeout: float = 2) -> None:
        """Until every packet handed to the socket (acks included) is written to it: engineio
        writes from a queue of its own, and closing the socket before would drop them."""
        queue = getattr(self.sio.eio, "queue", None)
        deadline = time.monotonic() + timeout
        while queue is not None and queue.unfinished_tasks and self.sio.eio.state == "connected":
            if time.monotonic() > deadline:
                return
            time.sleep(0.005)

    def close(self) -> None:
        """Close with a goodbye (Socket.IO disconnect, then a FIN), after every ack is out."""
        if self.ended is None:
            self.ended = "closed"
        with self._lock:
            self.closing = True
        try:
            self.flush()
            self.sio.disconnect()
        except Exception:
            pass

    def drop(self) -> None:
        """Go without a goodbye: a FIN, no Socket.IO disconnect (the acks handed to the
        socket before are written first, as a kernel would)."""
        if self.ended is None:
            self.ended = "dropped"
        with self._lock:
            self.closing = True
        self.flush()
        eio = self.sio.eio
        try:
            if eio.ws is not None:
                sock = eio.ws.sock
                sock.shutdown(socket.SHUT_RDWR)
                # Closing a socket with unread data resets the connection, and a reset
                # throws away what our kernel has not sent yet: the acks would never
                # reach the server. Closed once the server's kernel has them all.
                wait_until(lambda: _unsent(sock) == 0, 2, "the acks to reach the server's kernel",
                           interval=0.001)
                sock.close()
        except Exception:
            pass
        self.disconnected.wait(5)
        self.close()


    def vanish(self, proxy: Any) -> None:
        """Vanish without a FIN, like a tab whose network went away: the `Proxy` it
        connected through stops forwarding, so the server hears nothing, ever; then this
        end is let go (its own close never gets past the proxy). A tab whose connection
        has already ended (the server cut it, say) has nothing left to vanish from: it
        is let go all the same."""
        try:
            port = self.sio.eio.ws.sock.getsockname()[1]  # what the `Proxy` knows it by
        except (AttributeError, OSError):
            port = None
        if port is not None:
            proxy.cut(port)
            self.ended, self.vanished_at = "vanished", time.monotonic()
        self.drop()


def _unsent(sock: socket.socket) -> int:
    """Bytes in `sock`'s send queue that the other end's kernel has not acknowledged yet."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]


def churn_by_fin(url_of: Callable[[str], str], uids: list[str],
                 publish: Callable[[], None]) -> tuple[dict[str, list[RMClient]], int]:
    """One ack-mode tab per user (on `url_of(uid)`); then, while `publish` runs in a thread
    of its own, four churners drop their users' tabs with a bare FIN, one after another,
    each coming back at once. Every tab of each user, oldest first, and how many drops."""
    tabs_by_uid: dict[str, list[RMClient]] = {u: [] for u in uids}

    def comes_back(uid: str) -> RMClient:
        tab = RMClient(url_of(uid)).connect(timeout=30)
        tabs_by_uid[uid].append(tab)
        assert tab.identify(ack(uid), timeout=30) == {"ok": True, "uid": uid}
        return tab

    live = {u: comes_back(u) for u in uids}
    publisher = threading.Thread(target=publish)

    def churn(mine: list[str], seed: int) -> int:
        rng, drops = random.Random(seed), 0
        while publisher.is_alive():
            uid = rng.choice(mine)
            live[uid].drop()
            live[uid] = comes_back(uid)
            drops += 1
            time.sleep(0.01)
        return drops

    publisher.start()
    with ThreadPoolExecutor(4) as pool:
        drops = sum(f.result() for f in [pool.submit(churn, uids[k::4], k) for k in range(4)])
    publisher.join()
    return tabs_by_uid, drops


def ack(uid: str) -> dict[str, Any]:
    """The identifier of an ack-mode tab of `uid` (SPEC §4)."""
    return {"uid": uid, "ack": True}


def connected(url: str, identifier: Any = None, **kwargs: Any) -> RMClient:
    """A client that is connected and, if `identifier` is given, identified."""
    client = RMClient(url, **kwargs).connect()
    if identifier is not None:
        reply = client.identify(identifier)
        assert reply and reply.get("ok"), reply
    return client

