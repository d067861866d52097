"""The demo chat page, the vendored socket.io-client, and the demo-only endpoints.

The page (`GET /`) and the client library are always served. The endpoints under `/demo/`
publish to Redis and edit group membership for anyone who asks, so they exist only while
config `demo` is true; otherwise they answer 404.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    jsonify,
    render_template,
    request,
    send_from_directory,
)

from . import assets, inbox, names

bp = Blueprint("demo", __name__)

# The largest payload the demo publishes, in UTF-8 bytes. Apps may publish more; the demo
# has no reason to.
MAX_PAYLOAD = 64 * 1024

# The page loads only its own files and talks only to its own origin (ws: included).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class BadRequest(Exception):
    """A demo request we refuse, with a code and a sentence for the page."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@bp.errorhandler(BadRequest)
def bad_request(exc: BadRequest) -> tuple[Response, int]:
    return jsonify(error=exc.code, message=exc.message), 400


def _service() -> Any:
    return current_app.extensions["redmessenger"]


### The page ###


@bp.get("/")
def index() -> Response:
    """Serve the demo chat page."""
    config = _service().config
    html = render_template(
        "index.html",
        rm_route=config.rm_route,
        secure_mode=config.secure_mode,
        demo=config.demo,
        # Token mode: the page gets its tokens from /demo/token, standing in for a login.
        token_mode=config.demo and config.secure_mode and bool(config.token_secret),
        # Lets the page put the server's clock beside its own, to tell queued messages.
        server_time=int(time.time() * 1000),
        max_payload=MAX_PAYLOAD,
        # Without socket.io-client the page cannot connect: it says so instead.
        missing_client="socket.io.min.js" in assets.missing(),
        how_to_install=assets.how_to_install(),
    )
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/vendor/<name>")
def vendor(name: str) -> Response:
    """Serve a browser library from npm: from the package (a wheel), else node_modules."""
    if name not in assets.VENDOR_FILES:
        abort(404)
    path = assets.vendor_path(name)
    media_type = assets.VENDOR_FILES[name][2]
    if not path.is_file():
        return Response(
            f"/* {name} is not installed: {assets.how_to_install()}. */\n",
            status=404, mimetype=media_type,
        )
    return send_from_directory(path.parent, path.name, mimetype=media_type, max_age=3600)


### Demo-only endpoints ###


@bp.before_request
def demo_only() -> Response | tuple[Response, int] | None:
    """Hide everything under /demo/ unless config `demo` is on."""
    if request.path.startswith("/demo/") and not _service().config.demo:
        return jsonify(error="not_found", message="The demo endpoints are off (config demo is false)."), 404
    return None


def _json_body() -> dict[str, Any]:
    # Requiring application/json also keeps plain cross-site form posts out.
    if not request.is_json:
        raise BadRequest("invalid_json", "Send a JSON object with Content-Type: application/json.")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("invalid_json", "The body must be a JSON object.")
    return body


def _check_id(value: Any, what: str) -> str:
    if not names.valid_id(value):
        raise BadRequest(
            f"invalid_{what}",
            f"{what} must be 1 to {names.MAX_ID_LENGTH} characters with no ':', "
            "no whitespace and no control characters.",
        )
    return value


def _redis_down(exc: redis.RedisError) -> tuple[Response, int]:
    return jsonify(error="unavailable", message=f"Redis did not answer: {exc}"), 503


@bp.post("/demo/publish")
def publish() -> tuple[Response, int]:
    """PUBLISH a payload to a user's or a group's channel, exactly as an app would, or
    add it to the inbox (SPEC §9), where it waits while no server runs.

    Body: {"to": "user" | "group", "id": uid or cid, "payload": text, "via": "publish"
    (the default) | "inbox"}.
    """
    body = _json_body()
    to = body.get("to")
    if to not in ("user", "group"):
        raise BadRequest("invalid_to", 'to must be "user" or "group".')
    ident = _check_id(body.get("id"), "id")
    payload = body.get("payload")
    if not isinstance(payload, str):
        raise BadRequest("invalid_payload", "payload must be a string.")
    if len(payload.encode("utf-8", "surrogatepass")) > MAX_PAYLOAD:
        raise BadRequest("payload_too_large", f"payload must be at most {MAX_PAYLOAD} bytes of UTF-8.")
    try:
        payload.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("invalid_payload", "payload must be valid Unicode text.") from None
    via = body.get("via", "publish")
    if via not in ("publish", "inbox"):
        raise BadRequest("invalid_via", 'via must be "publish" or "inbox".')
    channel = names.user_channel(ident) if to == "user" else names.group_channel(ident)
    try:
        if via == "inbox":
            msg_id = inbox.publish(_service().redis, channel, payload)
            return jsonify(ok=True, channel=channel, via=via, id=msg_id), 200
        receivers = _service().redis.publish(channel, payload)
    except redis.RedisError as exc:
        return _redis_down(exc)
    # PUBLISH answers how many subscribers saw it: 0 means no RedMessenger was listening
    # and the message is gone, which is worth showing rather than hiding.
    return jsonify(ok=True, channel=channel, receivers=receivers), 200


# The longest-lived token the demo hands out; the default is short so that a tab left
# open shows the client fetching fresh ones.
MAX_DEMO_TTL = 3600
DEMO_TTL = 300


@bp.post("/demo/token")
def token() -> tuple[Response, int]:
    """Sign a token for any uid: the demo's stand-in for an app's login view.

    Body: {"uid": uid, "ttl": seconds (optional, 1 to 3600, default 300)}. It signs for
    anyone who asks, which is why it exists only while config `demo` is true.
    """
    from .tokens import token_for

    config = _service().config
    if not config.token_secret:
        return jsonify(error="not_found", message="Tokens are off (config token_secret is not set)."), 404
    body = _json_body()
    uid = _check_id(body.get("uid"), "uid")
    ttl = body.get("ttl", DEMO_TTL)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_DEMO_TTL:
        raise BadRequest("invalid_ttl", f"ttl must be a whole number of seconds from 1 to {MAX_DEMO_TTL}.")
    signed = token_for(uid, ttl=ttl, secret=config.token_secret[0], algorithm=config.token_algorithms[0])
    return jsonify(token=signed, expires_in=ttl), 200


@bp.get("/demo/groups/<path:cid>/members")
def members(cid: str) -> tuple[Response, int]:
    """List a group's members, each with the length of their queue."""
    _check_id(cid, "group")
    try:
        return jsonify(group=cid, members=_members(cid)), 200
    except redis.RedisError as exc:
        return _redis_down(exc)


@bp.post("/demo/groups/<path:cid>/members")
def membership(cid: str) -> tuple[Response, int]:
    """Join (SADD) or leave (SREM) a group. Body: {"uid": uid, "action": "join" | "leave"}."""
    _check_id(cid, "group")
    body = _json_body()
    uid = _check_id(body.get("uid"), "uid")
    action = body.get("action", "join")
    if action not in ("join", "leave"):
        raise BadRequest("invalid_action", 'action must be "join" or "leave".')
    key = names.group_members_key(cid)
    client = _service().redis
    try:
        if action == "join":
            client.sadd(key, uid)
        else:
            client.srem(key, uid)
        return jsonify(ok=True, group=cid, action=action, members=_members(cid)), 200
    except redis.RedisError as exc:
        return _redis_down(exc)


def _members(cid: str) -> list[dict[str, Any]]:
    client = _service().redis
    uids = sorted(m.decode("utf-8", "replace") for m in client.smembers(names.group_members_key(cid)))
    pipe = client.pipeline(transaction=False)
    for uid in uids:
        pipe.llen(names.queue_key(uid))
    return [{"uid": uid, "queued": queued} for uid, queued in zip(uids, pipe.execute(), strict=True)]
