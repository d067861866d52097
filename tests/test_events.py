"""The socket protocol through Flask-SocketIO's test client (fast, beside the real tests)."""

from __future__ import annotations

import time

import pytest

from rm_flask import create_app, events
from rm_flask.events import IdentifyError, parse_identifier


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("user1", ("user1", None, False, False)),
        ("user1:", ("user1", "", False, False)),
        ("user1:k:with:colons", ("user1", "k:with:colons", False, False)),
        ({"uid": "u", "key": "k", "ack": True}, ("u", "k", True, False)),
        ({"uid": "u", "ack": "batch"}, ("u", None, True, True)),
        ({"uid": "u"}, ("u", None, False, False)),
    ],
)
def test_parse_identifier(data, expected):
    assert parse_identifier(data) == expected


@pytest.mark.parametrize("data", [None, 1, 1.5, True, [], {}, "", ":k", "a b", {"uid": 1},
                                  {"uid": "u", "ack": 1}, {"uid": "u", "ack": "Batch"},
                                  {"uid": "u", "ack": ["batch"]}, "u" * 3000])
def test_parse_identifier_refuses(data):
    with pytest.raises(IdentifyError):
        parse_identifier(data)


@pytest.fixture
def app(redis_server, r):
    return create_app(async_mode="threading", start=False, redis_port=redis_server.port,
                      log_level="warning")


def test_identify_while_not_subscribed_is_held_then_unavailable(app, monkeypatch):
    # SPEC §4: a server that cannot serve yet holds the identify a few seconds first.
    monkeypatch.setattr(events, "IDENTIFY_HOLD", 0.5)
    client = app.extensions["socketio"].test_client(app, namespace="/rm")
    started = time.monotonic()
    reply = client.emit("identifier", "alice", namespace="/rm", callback=True)
    assert reply == {"ok": False, "error": "unavailable"}
    assert time.monotonic() - started >= 0.5


def test_identify_reply_and_refusal(app):
    # No listener runs in this app (start=False): stand in for its subscription and view.
    service = app.extensions["redmessenger"]
    service.listener.subscribed = True
    service.dispatcher.view.synced = True
    socketio = app.extensions["socketio"]
    client = socketio.test_client(app, namespace="/rm")
    assert client.emit("identifier", "alice", namespace="/rm", callback=True) == {"ok": True, "uid": "alice"}
    bad = socketio.test_client(app, namespace="/rm")
    reply = bad.emit("identifier", {"uid": "a b"}, namespace="/rm", callback=True)
    assert reply == {"ok": False, "error": "invalid_identifier"}
    assert not bad.is_connected("/rm"), "refused sockets are disconnected"


def test_healthz_is_503_when_not_subscribed(app):
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["reason"] == "not subscribed"
    assert app.test_client().get("/metrics").status_code == 200
