"""The Socket.IO side (SPEC §4): the namespace's handlers for connect, identify and disconnect."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from flask import request
from flask_socketio import SocketIO

from . import names
from .auth import Gate, IdentifyError
from .registry import ConnLimitError

if TYPE_CHECKING:
    from .service import Service

log = logging.getLogger("rm_flask")

# An identifier longer than this is refused before it is looked at any further.
MAX_IDENTIFIER = 2048
MAX_KEY = 1024
# Ids one `ack` event may carry; the rest are ignored (the client sends at most 100, and
# whatever is not acknowledged is given back and sent again, never lost).
MAX_ACK_IDS = 1000
# Seconds an identify waits for a server that is starting or rejoining Redis (SPEC §4).
IDENTIFY_HOLD = 5.0


def parse_identifier(data: Any) -> tuple[str, str | None, bool, bool]:
    """Read `"uid"`, `"uid:key"` or `{"uid", "key", "ack"}` into (uid, key, ack, batch):
    `"ack"` is true (an ack per message), `"batch"` (`ack` events, SPEC §4) or false."""
    ack: Any = False
    if isinstance(data, str):
        if len(data) > MAX_IDENTIFIER:
            raise IdentifyError("invalid_identifier")
        uid, sep, key = data.partition(":")
        key_or_none: str | None = key if sep else None
    elif isinstance(data, dict):
        uid, key_or_none, ack = data.get("uid"), data.get("key"), data.get("ack", False)
        if not (isinstance(ack, bool) or ack == "batch"):
            raise IdentifyError("invalid_identifier")
        if not (key_or_none is None or isinstance(key_or_none, str)):
            raise IdentifyError("invalid_identifier")
    else:
        raise IdentifyError("invalid_identifier")
    if not names.valid_id(uid) or (key_or_none is not None and len(key_or_none) > MAX_KEY):
        raise IdentifyError("invalid_identifier")
    return uid, key_or_none, ack is not False, ack == "batch"


def describe(data: Any) -> str:
    """A short, key-free account of a refused identifier for the log."""
    if isinstance(data, str):
        return repr(data.partition(":")[0][:40])
    if isinstance(data, dict):
        return repr(str(data.get("uid"))[:40])
    return type(data).__name__


def init_app(socketio: SocketIO, service: Service) -> None:
    """Register the namespace's handlers."""
    config = service.config
    namespace = config.rm_route
    registry = service.registry
    sessions = service.dispatcher.sessions
    delivery = service.dispatcher.delivery
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
            uid, key, ack, batch = parse_identifier(data)
            if not service.accepting() and not service.wait_accepting(IDENTIFY_HOLD):
                # Starting or rejoining takes moments; past that, Redis is out of reach:
                # we could not deliver anything, nor tell what is queued.
                raise IdentifyError("unavailable")
            gate.authenticate(uid, key, data, host)
            if conn.requested == uid:
                sessions.switch_ack(conn, ack, batch)  # the same uid again: only the mode may change
                return {"ok": True, "uid": uid}
            if conn.announced is not None:
                sessions.leave(conn)
            conn.requested, conn.ack, conn.batch = uid, ack, batch
            log.info("Assigning id %s to socket %s.", uid, conn.address)
            log.info("You're subscribed to %s!", names.user_channel(uid))
            # Announced before the reply, so that whatever is published once the client
            # has its reply comes after the announcement in every server's sequence.
            if not sessions.admit(conn, uid):
                raise IdentifyError("unavailable")
        except IdentifyError as exc:
            log.warning("Refusing identifier %s from %s: %s", describe(data), conn.address, exc.code)
            metrics.identify_failed.labels(exc.code).inc()
            gate.refused(host, exc.code)
            transport.refuse(conn.sid, exc.code)
            return {"ok": False, "error": exc.code}
        metrics.identified.inc()
        return {"ok": True, "uid": uid}

    def ack(sid: str, ids: Any = None, *_: Any) -> None:
        # Batch acks (SPEC §4); taken from any socket that acknowledges, so that one that
        # switched modes can still acknowledge what it was sent before.
        conn = registry.get(sid)
        if conn is None or conn.uid is None or not conn.ack:
            return
        if not isinstance(ids, list):
            log.warning("Ignoring an ack from %s: not a list of ids", conn.address)
            return
        delivery.acked_many(conn.uid, conn.sid, ids[:MAX_ACK_IDS])

    # On python-socketio's server itself, not through Flask-SocketIO's `on`: an ack needs
    # no Flask request context, and making one per event cost more than the ack (a tab
    # that gets a message every few hundred ms sends an `ack` for each).
    socketio.server.on("ack", ack, namespace=namespace)
    # And most of them before it: handled where they are read (see `take_acks`).
    transport.take_acks(ack)

    @socketio.on("disconnect", namespace=namespace)
    def disconnect(reason: Any = None) -> None:
        # An `ack` event read just before the close is handled in a greenlet of its own,
        # as Socket.IO runs every event, and may not have run yet: let it, or what it
        # acknowledges would be given back and sent again.
        time.sleep(0)
        conn = registry.remove(request.sid)
        if conn is None:
            return
        metrics.sockets.dec()
        sessions.leave(conn)
