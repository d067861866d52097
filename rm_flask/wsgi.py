"""The app for a WSGI server (`wsgi:app` in a checkout, `rm_flask.wsgi:app` when installed).

A bad config value or an unreachable Redis is one line on stderr, and the worker exits 3:
gunicorn's code for a worker that refuses to boot, on which it stops instead of retrying
(without `gunicorn.conf.py`, which already refuses a bad config with exit 2).
"""

from __future__ import annotations

import sys
from typing import Any

WORKER_BOOT_ERROR = 3


def make_app() -> Any:
    from . import create_app
    from .config import ConfigError
    from .service import RedisUnreachable

    try:
        return create_app(async_mode="gevent")
    except (ConfigError, RedisUnreachable) as exc:
        print(exc, file=sys.stderr, flush=True)
        raise SystemExit(WORKER_BOOT_ERROR) from None


def __getattr__(name: str) -> Any:
    # `rm_flask.wsgi:app` builds the app when gunicorn asks for it, not when this module
    # is imported (`rm_flask.wsgi` is also imported by the root `wsgi.py`).
    if name == "app":
        global app
        app = make_app()
        return app
    raise AttributeError(name)
