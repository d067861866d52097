"""The comparison row: a plain Flask-SocketIO gevent relay with no queue and no guarantees.

It PSUBSCRIBEs ``rm.*``; an ``identifier`` event joins a room named after the uid; a publish to
``rm.users.$uid`` is one emit to that room, a publish to ``rm.channels.$cid`` (or the alias
``rm.groups.$cid``) is one emit per member room (SMEMBERS each time). This is what a
straightforward Flask-SocketIO implementation costs, so the benchmark can show what our
server's guarantees and optimisations cost or save against it.

Run: ``gunicorn -k geventwebsocket.gunicorn.workers.GeventWebSocketWorker -w 1
-b 127.0.0.1:8080 bench.baseline_relay:app`` (env ``RM_REDIS_HOST``, ``RM_REDIS_PORT``).
"""

from gevent import monkey

# gunicorn's gevent worker has already patched by the time it imports us; patching again is a
# no-op, and it makes ``python bench/baseline_relay.py`` work the same way.
monkey.patch_all()

import itertools  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import redis  # noqa: E402
from flask import Flask, jsonify  # noqa: E402
from flask_socketio import SocketIO, join_room  # noqa: E402

NAMESPACE = "/rm"
REDIS_HOST = os.environ.get("RM_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("RM_REDIS_PORT", "6379"))

app = Flask(__name__)
socketio = SocketIO(app, async_mode="gevent", cors_allowed_origins="*")
_state: dict[str, bool] = {"subscribed": False}
_ids = itertools.count(1)
_id_prefix = f"{os.getpid():x}-"


def _uid_from(data: Any) -> str | None:
    """Accept the seed's ``"uid"`` / ``"uid:key"`` string and the ``{"uid": ...}`` object."""
    if isinstance(data, dict):
        data = data.get("uid")
    if not isinstance(data, str):
        return None
    uid = data.split(":", 1)[0]
    return uid if 0 < len(uid) <= 256 and not any(c.isspace() for c in uid) else None


@socketio.on("identifier", namespace=NAMESPACE)
def identifier(data: Any) -> dict[str, Any]:
    uid = _uid_from(data)
    if uid is None:
        return {"ok": False, "error": "invalid_identifier"}
    join_room(uid)
    return {"ok": True, "uid": uid}


@app.get("/healthz")
def healthz() -> Any:
    ok = _state["subscribed"]
    return jsonify({"subscribed": ok}), (200 if ok else 503)


def _envelope(channel: str, data: str) -> dict[str, Any]:
    return {
        "id": _id_prefix + str(next(_ids)),
        "source": channel,
        "timestamp": int(time.time() * 1000),
        "bubble": True,
        "payload": data,
    }


def _dispatch(cmd: redis.Redis, channel: str, data: str) -> None:
    kind, _, target = channel[3:].partition(".")
    if not target:
        return
    env = _envelope(channel, data)
    if kind == "users":
        socketio.emit("message", env, to=target, namespace=NAMESPACE)
    elif kind in ("channels", "groups"):
        for uid in cmd.smembers(f"rm:channels:{target}:subscribers"):
            socketio.emit("message", env, to=uid, namespace=NAMESPACE)


def _listen() -> None:
    """Read pub/sub forever; resubscribe after a Redis outage (the bench restarts nothing)."""
    cmd = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, decode_responses=True)
    while True:
        try:
            pubsub = cmd.pubsub(ignore_subscribe_messages=True)
            pubsub.psubscribe("rm.*")
            _state["subscribed"] = True
            for msg in pubsub.listen():
                if msg["type"] == "pmessage":
                    _dispatch(cmd, msg["channel"], msg["data"])
        except redis.RedisError:
            _state["subscribed"] = False
            gevent.sleep(0.5)


socketio.start_background_task(_listen)

if __name__ == "__main__":
    socketio.run(app, host="127.0.0.1", port=int(os.environ.get("RM_WS_PORT", "8080")))
