"""Token mode in real Chromium: the demo page gets short-lived tokens through getToken()."""

from __future__ import annotations

import time

import jwt
import pytest

from tests.support.processes import wait_until

from .support import received

expect = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed").expect

SECRET = "browser-test-secret-" + "s" * 32


def test_a_tab_whose_token_expired_reconnects_with_a_fresh_one(new_page, make_server, r):
    """The tab's token lives 2 s. Long after it expired, the server restarts (kill -9):
    the tab reconnects, asks getToken() for a new token, is let in and keeps receiving.
    A tab holding on to its first token is refused `unauthorized` instead."""
    server = make_server(demo=True, secure_mode=True, token_secret=SECRET, token_leeway=0)
    tokens: list[dict] = []

    def record(response):
        if response.url.endswith("/demo/token") and response.ok:
            tokens.append({"at": time.time(), **response.json()})

    page = new_page(wait_identified=False, server=server)
    page.on("response", record)
    page.goto(server.url + "/?uid=tia&ttl=2")
    expect(page.locator("#status")).to_have_text("Online as tia")
    assert r.publish("rm.users.tia", "before") >= 1
    expect(received(page).locator(".text")).to_have_text(["before"])
    assert len(tokens) == 1
    first = jwt.decode(tokens[0]["token"], SECRET, algorithms=["HS256"])
    assert first["sub"] == "tia" and first["exp"] - first["iat"] == 2
    wait_until(lambda: time.time() > first["exp"] + 1, 10, "the first token to expire")

    # Until the tab notices the restart it still shows "identified": wait for what its
    # reconnect asks for first, a token (CI once read the old state and found one token).
    with page.expect_response(lambda resp: resp.url.endswith("/demo/token") and resp.ok, timeout=30_000):
        server.restart()
    expect(page.locator("#status")).to_have_attribute("data-state", "identified", timeout=30_000)
    assert len(tokens) == 2, "a fresh token for the new identify"
    second = jwt.decode(tokens[1]["token"], SECRET, algorithms=["HS256"])
    assert second["iat"] > first["exp"]
    assert r.publish("rm.users.tia", "after") >= 1
    expect(received(page).locator(".text")).to_have_text(["before", "after"])
    assert "Refusing identifier 'tia'" not in server.log()

    # Without getToken, the expired token is what a reconnect would present.
    refused = page.evaluate("""(token) => new Promise(function (resolve) {
      var rm = new RedMessenger(location.origin + "/rm", { uid: "tia", token: token });
      rm.on("error", function (error) { resolve([error.code, rm.state]); });
    })""", tokens[0]["token"])
    assert refused == ["unauthorized", "closed"]
    assert "Token for 'tia' refused: expired" in server.log()
    assert tokens[0]["token"] not in server.log()
