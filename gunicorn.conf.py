"""gunicorn settings, read from the working folder: `gunicorn wsgi:app` needs no flags.

A gevent worker serves at most `worker_connections` clients (past it even /healthz
hangs), so that number follows `conn_limit`, plus room for HTTP requests.
"""

from rm_flask.config import load_config

_config = load_config()

worker_class = "geventwebsocket.gunicorn.workers.GeventWebSocketWorker"
workers = 1
bind = [f"0.0.0.0:{_config.ws_port}"]
worker_connections = _config.conn_limit + 100
# Sockets are long-lived; the worker must not be recycled under them.
timeout = 60
graceful_timeout = 10
