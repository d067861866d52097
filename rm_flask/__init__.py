"""RedMessenger: deliver Redis PUBLISHes to browsers over Socket.IO, and keep them in Redis
for users who are away."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis
    from flask import Flask

    from .config import Config

MAX_PACKET = 64 * 1024

# Nothing heavy is imported at module level: `python -m rm_flask` imports this package
# before its __main__ can monkey-patch for gevent, and patching must come first.


def token_for(uid: str, ttl: int = 3600, secret: str | None = None) -> str:
    """Sign a token that lets `uid` identify for `ttl` seconds (for the app's login view).

    `secret` defaults to the first of config `token_secret`. See rm_flask/tokens.py.
    """
    from .tokens import token_for as sign  # PyJWT imports ssl: not before gevent patches

    return sign(uid, ttl=ttl, secret=secret)


def publish(client: redis.Redis, channel: str, data: bytes | str, key: str | None = None) -> str:
    """Send `data` to `channel` through the inbox (SPEC §9), with a redis-py client;
    returns the envelope id the message will carry.

    Unlike a PUBLISH, the message waits in Redis while no RedMessenger server runs, and
    reaches the user once one does. Raises `ValueError` (`InvalidChannel`) for a channel
    that is not rm.users.UID, rm.channels.CID or rm.groups.CID. Two calls with the same
    `key` within `inbox_key_ttl` send one message.
    """
    from .inbox import publish as add

    return add(client, channel, data, key)


def create_app(
    config: Config | None = None,
    *,
    async_mode: str | None = None,
    start: bool = True,
    **overrides: Any,
) -> Flask:
    """Create the Flask app, its Socket.IO server and the RedMessenger service.

    `config` defaults to `load_config()` (config.json, then RM_* variables); `overrides`
    replace single keys. `start=False` leaves the Redis listener and housekeeping off.
    """
    from flask import Flask
    from flask_socketio import SocketIO

    from . import admin, assets, demo, events, logs, stats, views
    from .client_manager import ClientManager
    from .config import load_config
    from .service import Service

    if config is None:
        config = load_config(overrides=overrides)
    elif overrides:
        import dataclasses

        config = dataclasses.replace(config, **overrides)
    logs.setup(config.log_level, config.log_format)
    missing = assets.missing()
    if missing:
        import logging

        logging.getLogger("rm_flask").warning(
            "Missing browser files: %s (needed by %s): %s; until then those pages say so.",
            ", ".join(missing), ", ".join(sorted(set(missing.values()))), assets.how_to_install(),
        )

    app = Flask(__name__, template_folder=str(assets.templates_dir()),
                static_folder=str(assets.static_dir()))
    socketio = SocketIO(
        app,
        async_mode=async_mode,
        cors_allowed_origins=config.cors_allowed_origins,
        # The CONNECT reply goes out before our connect handler runs, so that a refusal
        # (conn_limit) can still be told to the client as an `rm_error` event.
        always_connect=True,
        ping_interval=config.ping_interval,
        ping_timeout=config.ping_timeout,
        # Clients only ever send identifiers and acks: a larger packet is hostile, and
        # Engine.IO closes that connection without reading it.
        max_http_buffer_size=MAX_PACKET,
        client_manager=ClientManager(),
    )
    service = Service(config, socketio)
    app.extensions["redmessenger"] = service
    app.config["RM"] = config
    events.init_app(socketio, service)
    app.register_blueprint(views.bp)
    app.register_blueprint(demo.bp)
    stats.init_app(app, service)
    admin.init_app(app)
    if start:
        service.start()
    return app
