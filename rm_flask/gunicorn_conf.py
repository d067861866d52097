"""gunicorn settings for RedMessenger, from its config (`-c python:rm_flask.gunicorn_conf`).

A checkout's `gunicorn.conf.py` (read from the working folder) is these settings. A gevent
worker serves at most `worker_connections` clients (past it even /healthz hangs), so that
number follows `conn_limit`, plus room for HTTP requests.
"""

import sys
from typing import Any

from rm_flask.config import ConfigError, load_config

try:
    _config = load_config()
except ConfigError as exc:
    # gunicorn prints a traceback and exits 1 for any exception in its config file;
    # SystemExit passes through: one line and exit 2, as `redmessenger serve` does.
    print(exc, file=sys.stderr)
    sys.exit(2)

worker_class = "geventwebsocket.gunicorn.workers.GeventWebSocketWorker"
workers = 1
bind = [f"0.0.0.0:{_config.ws_port}"]
worker_connections = _config.conn_limit + 100
# Sockets are long-lived; the worker must not be recycled under them.
timeout = 60
graceful_timeout = 10


def worker_exit(server: Any, worker: Any) -> None:
    """The worker is stopping: unsubscribe and route what was read before the process ends
    (SIGTERM under `python -m rm_flask` does the same)."""
    service = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("redmessenger")
    if service is not None:
        service.stop()
