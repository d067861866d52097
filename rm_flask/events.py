"""The Socket.IO side (SPEC §4): connect, identify, disconnect, and sending to sockets."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engineio import packet as eio_packet
from flask import request
from flask_socketio import SocketIO

from . import names
from .auth import Gate, IdentifyError
from .envelope import Message
from .registry import Conn, ConnLimitError

if TYPE_CHECKING:
    from .service import Service

log = logging.getLogger("rm_flask")

# An identifier longer than this is refused before it is looked at any further.
MAX_IDENTIFIER = 2048
MAX_KEY = 1024
# Seconds an identify waits for a server that is starting or rejoining Redis (SPEC §4).
IDENTIFY_HOLD = 5.0


def parse_identifier(data: Any) -> tuple[str, str | None, bool]:
    """Read `"uid"`, `"uid:key"` or `{"uid", "key", "ack"}` into (uid, key, ack)."""
    if isinstance(data, str):
        if len(data) > MAX_IDENTIFIER:
            raise IdentifyError("invalid_identifier")
        uid, sep, key = data.partition(":")
        key_or_none: str | None = key if sep else None
        ack = False
    elif isinstance(data, dict):
        uid, key_or_none, ack = data.get("uid"), data.get("key"), data.get("ack", False)
        if not isinstance(ack, bool) or not (key_or_none is None or isinstance(key_or_none, str)):
            raise IdentifyError("invalid_identifier")
    else:
        raise IdentifyError("invalid_identifier")
    if not names.valid_id(uid) or (key_or_none is not None and len(key_or_none) > MAX_KEY):
        raise IdentifyError("invalid_identifier")
    return uid, key_or_none, ack


def describe(data: Any) -> str:
    """A short, key-free account of a refused identifier for the log."""
    if isinstance(data, str):
        return repr(data.partition(":")[0][:40])
    if isinstance(data, dict):
        return repr(str(data.get("uid"))[:40])
    return type(data).__name__


class SocketTransport:
    """Sends envelopes and closes sockets through python-socketio's server."""

    def __init__(self, socketio: SocketIO, namespace: str, max_buffered: int = 1000) -> None:
        self.socketio = socketio
        self.namespace = namespace
        self.max_buffered = max_buffered
        self._prefix = f"2{namespace},"  # a Socket.IO EVENT packet in our namespace

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


def init_app(socketio: SocketIO, service: Service) -> None:
    """Register the namespace's handlers."""
    config = service.config
    namespace = config.rm_route
    registry = service.registry
    dispatcher = service.dispatcher
    transport = service.transport
    metrics = service.metrics
    gate = Gate(config, service.redis)

    @socketio.on("connect", namespace=namespace)
    def connect(auth: Any = None) -> bool | None:
        environ = request.environ
        address = f"{environ.get('REMOTE_ADDR', '?')}:{environ.get('REMOTE_PORT', '?')}"
        eio_sid = socketio.server.manager.eio_sid_from_sid(request.sid, namespace)
        try:
            registry.connect(request.sid, address, eio_sid)
        except ConnLimitError:
            log.warning("Refusing connection %s: conn_limit (%d) reached", address, config.conn_limit)
            metrics.identify_failed.labels("conn_limit").inc()
            transport.refuse(request.sid, "conn_limit")
            return None
        metrics.sockets.inc()
        log.info("New connection %s on *:%d! Waiting for ID...", address, config.ws_port)
        return None

    @socketio.on("identifier", namespace=namespace)
    def identifier(data: Any = None) -> dict[str, Any]:
        conn = registry.get(request.sid)
        if conn is None:
            return {"ok": False, "error": "conn_limit"}
        host = conn.address.rpartition(":")[0]
        try:
            gate.screen(host)
            uid, key, ack = parse_identifier(data)
            if not service.accepting() and not service.wait_accepting(IDENTIFY_HOLD):
                # Starting or rejoining takes moments; past that, Redis is out of reach:
                # we could not deliver anything, nor tell what is queued.
                raise IdentifyError("unavailable")
            gate.authenticate(uid, key, data, host)
            if conn.requested == uid:
                dispatcher.switch_ack(conn, ack)  # the same uid again: only the mode may change
                return {"ok": True, "uid": uid}
            if conn.announced is not None:
                dispatcher.leave(conn)
            conn.requested, conn.ack = uid, ack
            log.info("Assigning id %s to socket %s.", uid, conn.address)
            log.info("You're subscribed to %s!", names.user_channel(uid))
            # Announced before the reply, so that whatever is published once the client
            # has its reply comes after the announcement in every server's sequence.
            if not dispatcher.admit(conn, uid):
                raise IdentifyError("unavailable")
        except IdentifyError as exc:
            log.warning("Refusing identifier %s from %s: %s", describe(data), conn.address, exc.code)
            metrics.identify_failed.labels(exc.code).inc()
            gate.refused(host, exc.code)
            transport.refuse(conn.sid, exc.code)
            return {"ok": False, "error": exc.code}
        metrics.identified.inc()
        return {"ok": True, "uid": uid}

    @socketio.on("disconnect", namespace=namespace)
    def disconnect(reason: Any = None) -> None:
        conn = registry.remove(request.sid)
        if conn is None:
            return
        metrics.sockets.dec()
        dispatcher.leave(conn)
