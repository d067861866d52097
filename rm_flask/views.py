"""HTTP routes: health and metrics (SPEC §8). The demo page lives in `demo.py`."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import assets

bp = Blueprint("views", __name__)


def _service():
    return current_app.extensions["redmessenger"]


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    ok, status = _service().health()
    missing = assets.missing()
    if missing:
        # Not a reason for 503: messages flow; only the pages that need them do not work.
        status["missing_files"] = {f"/vendor/{name}": needed for name, needed in missing.items()}
    return jsonify(status), 200 if ok else 503


@bp.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(_service().metrics.registry), mimetype=CONTENT_TYPE_LATEST)
