"""The demo chat page and its publish endpoint (placeholder until the demo lands)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("demo", __name__)


@bp.get("/")
def index() -> str:
    return "RedMessenger is running. Socket.IO namespace: /rm"
