"""Writing to sockets: what the dispatcher needs from the socket layer, and the one
implementation, on python-socketio's server."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from engineio import packet as eio_packet
from engineio.async_drivers.gevent import WebSocketWSGI as GeventWebSocket
from flask_socketio import SocketIO

from .envelope import Message
from .registry import Conn

log = logging.getLogger("rm_flask")


class Transport(Protocol):
    """What the dispatcher needs from the socket layer."""

    def send(self, conn: Conn, msg: Message, bubble: bool, callback: Callable[..., None] | None) -> bool:
        """Queue `msg` for the socket; False if the socket has too much unwritten already."""

    def disconnect(self, conn: Conn) -> None: ...


class SocketTransport:
    """Sends envelopes and closes sockets through python-socketio's server."""

    def __init__(self, socketio: SocketIO, namespace: str, max_buffered: int = 1000) -> None:
        self.socketio = socketio
        self.namespace = namespace
        self.max_buffered = max_buffered
        self._prefix = f"2{namespace},"  # a Socket.IO EVENT packet in our namespace
        eio = socketio.server.eio
        if eio.async_mode == "gevent" and eio._async["websocket"] is GeventWebSocket:
            # A copy: the dict is the driver module's own, shared by every server.
            eio._async = {**eio._async, "websocket": ReadsToTheEnd}

    def send(
        self, conn: Conn, msg: Message, bubble: bool, callback: Callable[..., None] | None
    ) -> bool:
        """Write one `message` event, encoded once per message rather than once per socket.

        This is `emit` without its per-call packet building and JSON encoding: the frame
        comes ready from `msg`, and only the ack id differs between sockets. It leans on
        python-socketio's ack registry and Engine.IO's socket table (versions pinned in
        requirements.txt; the socket tests cover both).
        """
        server = self.socketio.server
        eio_socket = server.eio.sockets.get(conn.eio_sid)
        if eio_socket is None or eio_socket.closed:
            return True  # gone already: its disconnect handler gives back what it held
        if eio_socket.queue.qsize() >= self.max_buffered:
            return False
        ack = str(server.manager._generate_ack_id(conn.sid, callback)) if callback else ""
        eio_socket.send(eio_packet.Packet(eio_packet.MESSAGE, self._prefix + ack + msg.frame(bubble)))
        return True

    def take_acks(self, handler: Callable[[str, Any], None]) -> None:
        """Give `ack` events (batch acks, SPEC §4) to `handler(sid, ids)` where they are read.

        python-socketio runs every event in a greenlet of its own, and a tab with batch
        acks sends one every 50 ms or so: in the direct benchmark, making those greenlets
        was 12% of the server's CPU. An `ack` neither waits on anything nor is answered,
        so it can run in the socket's reading greenlet, in the order read. Every other
        packet, and an `ack` that asks for an answer, goes on to python-socketio. This
        leans on Engine.IO's `message` handler and the Socket.IO packet format (versions
        pinned in requirements.txt; tests/test_transport.py).
        """
        server = self.socketio.server
        onward = server.eio.handlers["message"]
        namespace, prefix = self.namespace, f'2{self.namespace},["ack",'
        sid_of = server.manager.sid_from_eio_sid

        def message(eio_sid: str, data: Any) -> Any:
            ids = ack_ids(data, prefix)
            sid = sid_of(eio_sid, namespace) if ids is not None else None
            if sid is None:
                return onward(eio_sid, data)
            try:
                handler(sid, ids)
            except Exception:
                log.exception("ack handler error")
            return None

        server.eio.handlers["message"] = message

    def disconnect(self, conn: Conn) -> None:
        self.socketio.start_background_task(self._disconnect, conn.sid)

    def refuse(self, sid: str, code: str) -> None:
        """Tell a socket why it is refused, then close its whole connection."""
        server = self.socketio.server
        server.emit("rm_error", {"error": code}, to=sid, namespace=self.namespace)
        # From a task of its own, so that a callback reply queued now goes out first.
        self.socketio.start_background_task(self._disconnect, sid, True)

    def _disconnect(self, sid: str, whole: bool = False) -> None:
        server = self.socketio.server
        try:
            eio_sid = server.manager.eio_sid_from_sid(sid, self.namespace)
            server.disconnect(sid, namespace=self.namespace)
            if whole and eio_sid is not None:
                server.eio.disconnect(eio_sid)
        except Exception:
            log.debug("disconnect of %s failed", sid, exc_info=True)


class ReadsToTheEnd(GeventWebSocket):
    """Engine.IO's gevent-websocket wrapper, except that a write that fails does not stop
    the reading.

    A tab that closes with data it has not read makes its kernel reset the connection,
    and our next write to it fails. Engine.IO's writer then closes the websocket, and its
    reader stops at the next frame: acks the tab wrote before it closed, already in our
    kernel's buffer, were never read, and the messages they acknowledged went to the
    user's next tab again (9-42 per run of 40,000 messages with 40 tabs churning by FIN).
    Here the close that follows a failed write is left out: the reader reads what is
    buffered, then meets the end itself (the reset, EOF or its timeout) and closes as
    usual. Leans on python-engineio's gevent driver (version pinned in requirements.txt;
    tests/test_transport.py).
    """

    write_failed = False

    def send(self, message: Any) -> Any:
        try:
            return super().send(message)
        except Exception:
            self.write_failed = True
            raise

    def close(self) -> Any:
        if self.write_failed:
            return None
        return super().close()


def ack_ids(data: Any, prefix: str) -> Any:
    """The ids of an `ack` event packet that starts with `prefix` (EVENT, our namespace,
    no ack id); None for any other packet. What the ids are is the handler's to judge."""
    if not isinstance(data, str) or not data.startswith(prefix):
        return None
    try:
        event = json.loads(data[len(prefix) - 7:])  # from '["ack",'
    except ValueError:
        return None  # python-socketio says what is wrong with it
    return event[1] if isinstance(event, list) and len(event) >= 2 else None
