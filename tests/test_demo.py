"""The demo blueprint: the page, the vendored socket.io-client, and the demo-only endpoints."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from rm_flask import create_app


@pytest.fixture
def make_client(redis_server: Any) -> Any:
    """A Flask test client with its own config (`make_client(demo=False)`); demo is on by default."""

    def make(**overrides: Any) -> Any:
        overrides.setdefault("demo", True)
        overrides.setdefault("redis_port", redis_server.port)
        return create_app(start=False, **overrides).test_client()

    return make


@pytest.fixture
def client(make_client: Any) -> Any:
    return make_client()


def subscribed(r: Any, channel: str) -> Any:
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    assert pubsub.get_message(timeout=1) is None  # consumes the subscribe confirmation
    return pubsub


def next_message(pubsub: Any, timeout: float = 5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None:
            return message
    raise AssertionError("nothing was published")


### The page ###


def test_page_is_the_demo_chat(client):
    response = client.get("/")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "<title>RedMessenger demo</title>" in html
    assert 'data-rm-route="/rm"' in html
    assert 'src="/vendor/socket.io.min.js"' in html and 'src="/static/redmessenger.js"' in html
    assert 'id="send-form"' in html and 'id="signin-key"' not in html
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]


def test_page_loads_nothing_from_elsewhere(client):
    html = client.get("/").get_data(as_text=True)
    assert re.findall(r'(?:src|href)="(?:https?:)?//', html) == []


def test_page_asks_for_a_key_in_secure_mode(make_client):
    html = make_client(secure_mode=True).get("/").get_data(as_text=True)
    assert 'id="signin-key"' in html and 'data-secure="true"' in html


def test_page_without_demo_has_no_send_form(make_client):
    html = make_client(demo=False).get("/").get_data(as_text=True)
    assert 'id="send-form"' not in html and "config <code>demo</code> is false" in html


def test_page_uses_the_configured_namespace(make_client):
    assert 'data-rm-route="/messages"' in make_client(rm_route="/messages").get("/").get_data(as_text=True)


def test_static_client_and_vendor_script_are_served(client):
    response = client.get("/vendor/socket.io.min.js")
    assert response.status_code == 200
    assert response.mimetype == "application/javascript"
    assert b"Socket.IO v4." in response.data[:200]
    response.close()
    response = client.get("/static/redmessenger.js")
    assert response.status_code == 200 and b"function RedMessenger(url, options, key)" in response.data
    response.close()
    assert client.get("/vendor/../package.json").status_code == 404
    assert client.get("/vendor/socket.io.js").status_code == 404


### POST /demo/publish ###


@pytest.mark.parametrize(
    ("to", "ident", "channel"),
    [("user", "bob", "rm.users.bob"), ("group", "cats", "rm.channels.cats")],
)
def test_publish_goes_out_as_an_app_would(client, r, to, ident, channel):
    pubsub = subscribed(r, channel)
    try:
        response = client.post("/demo/publish", json={"to": to, "id": ident, "payload": "Hello, world! ✓"})
        assert response.status_code == 200
        assert response.get_json() == {"ok": True, "channel": channel, "receivers": 1}
        message = next_message(pubsub)
        assert message["channel"] == channel.encode()
        assert message["data"] == "Hello, world! ✓".encode()
    finally:
        pubsub.close()


def test_publish_with_no_server_listening_says_so(client, r):
    response = client.post("/demo/publish", json={"to": "user", "id": "bob", "payload": "lost"})
    assert response.get_json()["receivers"] == 0


def test_publish_through_the_inbox_adds_an_entry_and_says_its_id(client, r):
    r.delete("rm:inbox")
    body = {"to": "user", "id": "bob", "payload": "kept", "via": "inbox"}
    response = client.post("/demo/publish", json=body)
    reply = response.get_json()
    [(entry_id, fields)] = r.xrange("rm:inbox")
    assert reply == {"ok": True, "channel": "rm.users.bob", "via": "inbox", "id": f"i-{entry_id.decode()}"}
    assert fields == {b"channel": b"rm.users.bob", b"data": b"kept"}
    r.delete("rm:inbox")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"to": "user", "id": "a:b", "payload": "x"}, "invalid_id"),
        ({"to": "user", "id": "a b", "payload": "x"}, "invalid_id"),
        ({"to": "user", "id": "", "payload": "x"}, "invalid_id"),
        ({"to": "user", "id": "x" * 257, "payload": "x"}, "invalid_id"),
        ({"to": "user", "id": 5, "payload": "x"}, "invalid_id"),
        ({"to": "user", "payload": "x"}, "invalid_id"),
        ({"to": "everyone", "id": "bob", "payload": "x"}, "invalid_to"),
        ({"id": "bob", "payload": "x"}, "invalid_to"),
        ({"to": "user", "id": "bob"}, "invalid_payload"),
        ({"to": "user", "id": "bob", "payload": {"text": "hi"}}, "invalid_payload"),
        ({"to": "user", "id": "bob", "payload": "\ud800"}, "invalid_payload"),
        ({"to": "user", "id": "bob", "payload": "x" * (64 * 1024 + 1)}, "payload_too_large"),
        ({"to": "user", "id": "bob", "payload": "é" * (32 * 1024 + 1)}, "payload_too_large"),
        (["user", "bob", "x"], "invalid_json"),
        ({"to": "user", "id": "bob", "payload": "x", "via": "pigeon"}, "invalid_via"),
    ],
)
def test_publish_refuses_bad_input(client, r, body, code):
    response = client.post("/demo/publish", json=body)
    assert response.status_code == 400
    data = response.get_json()
    assert data["error"] == code and data["message"]


def test_publish_takes_a_payload_of_64_kb(client, r):
    payload = "x" * (64 * 1024)
    response = client.post("/demo/publish", json={"to": "user", "id": "bob", "payload": payload})
    assert response.status_code == 200


def test_publish_needs_a_json_body(client, r):
    for response in [
        client.post("/demo/publish", data="to=user&id=bob&payload=x",
                    content_type="application/x-www-form-urlencoded"),
        client.post("/demo/publish", data="{not json", content_type="application/json"),
    ]:
        assert response.status_code == 400
        assert response.get_json()["error"] == "invalid_json"


### Group membership ###


def test_join_and_leave_a_group(client, r):
    url = "/demo/groups/cats/members"
    response = client.post(url, json={"uid": "alice"})
    assert response.status_code == 200
    assert response.get_json()["members"] == [{"uid": "alice", "queued": 0}]
    client.post(url, json={"uid": "bob", "action": "join"})
    assert r.smembers("rm:channels:cats:subscribers") == {b"alice", b"bob"}

    r.rpush("rm:users:bob:messages", "{}", "{}")
    assert client.get(url).get_json() == {
        "group": "cats", "members": [{"uid": "alice", "queued": 0}, {"uid": "bob", "queued": 2}],
    }
    response = client.post(url, json={"uid": "alice", "action": "leave"})
    assert response.get_json()["members"] == [{"uid": "bob", "queued": 2}]
    assert r.smembers("rm:channels:cats:subscribers") == {b"bob"}


def test_group_ids_may_hold_url_characters(client, r):
    response = client.post("/demo/groups/a%2Fb%3Fc%23d/members", json={"uid": "alice"})
    assert response.status_code == 200 and response.get_json()["group"] == "a/b?c#d"
    assert r.smembers("rm:channels:a/b?c#d:subscribers") == {b"alice"}


@pytest.mark.parametrize(
    ("url", "body", "code"),
    [
        ("/demo/groups/cats/members", {"uid": "a:b"}, "invalid_uid"),
        ("/demo/groups/cats/members", {}, "invalid_uid"),
        ("/demo/groups/cats/members", {"uid": "alice", "action": "kick"}, "invalid_action"),
        ("/demo/groups/c:ts/members", {"uid": "alice"}, "invalid_group"),
        ("/demo/groups/c%20ts/members", {"uid": "alice"}, "invalid_group"),
    ],
)
def test_membership_refuses_bad_input(client, r, url, body, code):
    response = client.post(url, json=body)
    assert response.status_code == 400 and response.get_json()["error"] == code
    assert r.keys("rm:channels:*") == []


### Demo off ###


def test_demo_endpoints_are_404_when_demo_is_off(make_client, r):
    client = make_client(demo=False)
    for response in [
        client.post("/demo/publish", json={"to": "user", "id": "bob", "payload": "x"}),
        client.post("/demo/groups/cats/members", json={"uid": "alice"}),
        client.get("/demo/groups/cats/members"),
    ]:
        assert response.status_code == 404
        assert response.get_json()["error"] == "not_found"
    assert r.keys("*") == []


def test_redis_down_is_a_503(make_client):
    from tests.support.processes import free_port

    client = make_client(redis_port=free_port())
    response = client.post("/demo/publish", json={"to": "user", "id": "bob", "payload": "x"})
    assert response.status_code == 503 and response.get_json()["error"] == "unavailable"


### Token mode ###

TOKEN_SECRET = "demo-test-secret-" + "d" * 32


def test_token_mode_page_asks_for_no_key(make_client):
    html = make_client(secure_mode=True, token_secret=TOKEN_SECRET).get("/").get_data(as_text=True)
    assert 'data-tokens="true"' in html and 'id="signin-key"' not in html and "/demo/token" in html
    html = make_client(token_secret=TOKEN_SECRET).get("/").get_data(as_text=True)
    assert 'data-tokens="false"' in html, "no token mode without secure mode: tokens would not be checked"


def test_demo_token_signs_a_short_lived_token(make_client):
    import jwt

    client = make_client(secure_mode=True, token_secret=TOKEN_SECRET)
    reply = client.post("/demo/token", json={"uid": "alice"})
    assert reply.status_code == 200 and reply.json["expires_in"] == 300
    claims = jwt.decode(reply.json["token"], TOKEN_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 300
    short = client.post("/demo/token", json={"uid": "alice", "ttl": 5}).json["token"]
    claims = jwt.decode(short, TOKEN_SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 5
    for body, code in [({"uid": "a b"}, "invalid_uid"), ({"uid": "a", "ttl": 0}, "invalid_ttl"),
                       ({"uid": "a", "ttl": 3601}, "invalid_ttl"), ({"uid": "a", "ttl": "5"}, "invalid_ttl")]:
        bad = client.post("/demo/token", json=body)
        assert (bad.status_code, bad.json["error"]) == (400, code), body


def test_demo_token_is_off_without_a_secret_or_the_demo(make_client):
    assert make_client(secure_mode=True).post("/demo/token", json={"uid": "a"}).status_code == 404
    off = make_client(demo=False, secure_mode=True, token_secret=TOKEN_SECRET)
    assert off.post("/demo/token", json={"uid": "a"}).status_code == 404
