"""Logging set-up: the seed's log lines, with a time stamp and a level."""

from __future__ import annotations

import logging
import sys


def setup(level: str) -> None:
    logger = logging.getLogger("rm_flask")
    logger.setLevel(level.upper())
    if not any(getattr(h, "_rm", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handler._rm = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
