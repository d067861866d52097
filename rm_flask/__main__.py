"""`python -m rm_flask [serve|publish|check|token] ...`: the `redmessenger` command (cli.py).

With no command it serves: `python -m rm_flask --embedded-redis` is the development server.
"""

from gevent import monkey

# Before anything else is imported, so that sockets, locks and sleeps are gevent's.
monkey.patch_all()

import sys  # noqa: E402

from rm_flask.cli import COMMANDS, main  # noqa: E402


def run(argv: list[str]) -> int:
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["serve", *argv]
    return main(argv, prog="python -m rm_flask")


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
