"""Logging set-up: the seed's log lines, with a time stamp and a level; as text or JSON."""

from __future__ import annotations

import json
import logging
import sys
import time

TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the text line's fields: time, level, message."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "message": record.getMessage(),
        }
        if record.exc_info:
            # A traceback stays inside the one object instead of spilling over lines.
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        # ISO 8601 in UTC with milliseconds: what log pipelines parse without being told.
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def setup(level: str, log_format: str = "text") -> None:
    """Send the `rm_flask` logger's lines to stderr, once, in `log_format`."""
    logger = logging.getLogger("rm_flask")
    logger.setLevel(level.upper())
    ours = [h for h in logger.handlers if getattr(h, "_rm", False)]
    if ours:
        ours[0].setFormatter(formatter(log_format))
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    handler._rm = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False
