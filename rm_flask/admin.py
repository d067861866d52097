"""`/admin`: the operators' page, live charts of what this server is doing (SPEC §8).

Off (404) unless config `admin_token` is set; then HTTP Basic, user `admin`, password the
token, compared in constant time; anything else gets 401. The page polls
`/admin/stats.json` every second and draws with uPlot (from npm, served under /vendor/).
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

import redis
from flask import Blueprint, Flask, Response, current_app, jsonify, render_template, request

from . import assets
from .demo import CSP
from .stats import Stats

bp = Blueprint("admin", __name__)
log = logging.getLogger("rm_flask")

REALM = "RedMessenger admin"
USER = "admin"
POLL_MS = 1000  # how often the page asks for numbers
# Failure reasons the identify chart draws as series of their own (SPEC §4); any other
# reason is added up as "other".
REASONS = ("invalid_identifier", "unauthorized", "conn_limit", "unavailable", "rate_limited",
           "identify_timeout")
TOTALS = {
    "received": "rm_messages_received_total",
    "delivered": "rm_messages_delivered_total",
    "queued": "rm_messages_queued_total",
    "drained": "rm_messages_drained_total",
    "recommitted": "rm_messages_recommitted_total",
    "trimmed": "rm_messages_trimmed_total",
    "failed": "rm_messages_failed_total",
    "identified": "rm_identify_success_total",
    "slow_closed": "rm_sockets_slow_closed_total",
    "redis_reconnects": "rm_redis_reconnects_total",
}


def _token() -> str | None:
    return current_app.config["RM"].admin_token


def _authorized(token: str) -> bool:
    auth = request.authorization
    if auth is None or auth.type != "basic":
        return False
    user = (auth.username or "").encode("utf-8", "surrogatepass")
    password = (auth.password or "").encode("utf-8", "surrogatepass")
    # Both compared, always: the time taken tells nothing about which one was wrong.
    user_ok = hmac.compare_digest(user, USER.encode())
    password_ok = hmac.compare_digest(password, token.encode())
    return user_ok and password_ok


@bp.before_request
def guard() -> Response | tuple[Response, int] | None:
    """404 while the page is off; 401 without the right credentials."""
    token = _token()
    if token is None:
        return jsonify(error="not_found", message="The admin page is off (config admin_token is null)."), 404
    if not _authorized(token):
        if request.authorization is not None:
            # Never the password: only that a try failed, and from where.
            log.warning("Admin: refused credentials from %s", request.remote_addr)
        response = jsonify(error="unauthorized", message="HTTP Basic: user admin, password admin_token.")
        response.headers["WWW-Authenticate"] = f'Basic realm="{REALM}", charset="UTF-8"'
        response.headers["Cache-Control"] = "no-store"
        return response, 401
    return None


@bp.after_request
def private(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = CSP
    return response


@bp.get("/admin")
def page() -> Response:
    """Serve the page; its script fetches the numbers."""
    missing = assets.missing()
    html = render_template(
        "admin.html",
        poll_ms=POLL_MS,
        reasons=REASONS,
        missing_charts="uPlot.iife.min.js" in missing or "uPlot.min.css" in missing,
        how_to_install=assets.how_to_install(),
    )
    return Response(html, mimetype="text/html")


@bp.get("/admin/stats.json")
def stats_json() -> Response:
    """This server's counters and gauges, the servers on its Redis, the deepest queues."""
    return jsonify(snapshot(current_app.extensions["rm_stats"]))


def snapshot(stats: Stats) -> dict[str, Any]:
    """Everything the page shows, as of now."""
    service = stats.service
    samples = stats.samples()

    def total(name: str) -> float:
        return sum(value for _, value in samples.get(name, []))

    def by_reason(name: str) -> dict[str, float]:
        return {labels.get("reason", ""): value for labels, value in samples.get(name, [])}

    ping = stats.redis_ping()
    age = stats.round_trip_age()
    status: dict[str, Any] = {
        "server": service.server_id,
        "time": int(time.time() * 1000),
        "totals": {key: total(name) for key, name in TOTALS.items()},
        "identify_failures": by_reason("rm_identify_failures_total"),
        "invalid": by_reason("rm_messages_invalid_total"),
        "sockets_open": total("rm_sockets_open"),
        "subscribed": service.listener.subscribed,
        "redis_ping_ms": None if ping is None else round(ping * 1000, 3),
        "round_trip_age_ms": None if age is None else round(age * 1000, 1),
        # The inbox's backlog at the last look (None before one), and what this server forwarded.
        "inbox": None if (inbox := service.inbox.stats()) is None else {
            **inbox, "forwarded": total("rm_inbox_forwarded_total"),
            "repeats": total("rm_inbox_repeats_total"), "invalid": total("rm_inbox_invalid_total")},
        "missing_files": assets.missing(),
    }
    try:
        status["servers"] = stats.servers()
        scan = stats.queues()
        status["queues"] = {
            "found": scan.queues,
            "complete": scan.complete,
            "deepest": [{"uid": uid, "length": length} for uid, length in scan.deepest],
        }
    except redis.RedisError as exc:
        status["servers"], status["queues"] = None, None
        status["redis_error"] = str(exc)
    return status


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
