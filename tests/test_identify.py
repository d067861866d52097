"""SPEC §4 and §5 rule 7: identifiers, secure mode, and refusals that harm no one else."""

from __future__ import annotations

import pytest

from tests.conftest import shared_server
from tests.support.processes import wait_until

HOSTILE = [
    42,
    {"nested": {"uid": "x"}},
    None,
    ["a", "b"],
    "x" * 60_000,
    "line\nbreak",
    "",
    ":key",
    "has space",
    {"uid": "ok", "ack": "yes"},
    {"uid": "ok", "key": 7},
    {"uid": "a:b"},
    "tab\there",
    "\x00nul",
    "u" * 257,
]


@pytest.fixture(scope="module")
def secure(redis_server, logs_dir):
    with shared_server(redis_server, logs_dir, secure_mode=True) as proc:
        yield proc


@pytest.mark.parametrize("identifier", HOSTILE, ids=lambda v: repr(v)[:20])
def test_hostile_identifier_is_refused_and_others_are_served(secure, clients, r, uid, identifier):
    r.set(f"rm:users:{uid}:key", "s3cret")
    bystander = clients(secure.url, f"{uid}:s3cret")
    bad = clients(secure.url)
    reply = bad.identify(identifier)
    assert reply == {"ok": False, "error": "invalid_identifier"}
    wait_until(lambda: bad.errors, 5, "rm_error")
    assert bad.errors == [{"error": "invalid_identifier"}]
    assert bad.disconnected.wait(5), "refused sockets are disconnected"
    r.publish(f"rm.users.{uid}", "still here")
    bystander.wait_for(1)
    assert bystander.payloads() == ["still here"]


def test_oversized_identifier_closes_only_that_connection(secure, clients, r, uid):
    """Past the 64 KB packet limit Engine.IO drops the connection unread."""
    r.set(f"rm:users:{uid}:key", "s3cret")
    bystander = clients(secure.url, f"{uid}:s3cret")
    bad = clients(secure.url)
    bad.emit_identify("x" * (1024 * 1024))
    assert bad.disconnected.wait(10)
    r.publish(f"rm.users.{uid}", "still here")
    assert bystander.wait_for(1)[0]["payload"] == "still here"


def test_secure_mode_accepts_the_right_key(secure, clients, r, uid):
    r.set(f"rm:users:{uid}:key", "s3cret")
    tab = clients(secure.url)
    assert tab.identify(f"{uid}:s3cret") == {"ok": True, "uid": uid}
    tab2 = clients(secure.url)
    assert tab2.identify({"uid": uid, "key": "s3cret", "ack": True}) == {"ok": True, "uid": uid}
    r.publish(f"rm.users.{uid}", "hi")
    tab.wait_for(1)
    tab2.wait_for(1)


@pytest.mark.parametrize("identifier", ["{uid}:wrong", "{uid}", "{uid}:", "{uid}:s3cretX", "{uid}:s3cre"])
def test_secure_mode_rejects_wrong_or_missing_keys(secure, clients, r, uid, identifier):
    r.set(f"rm:users:{uid}:key", "s3cret")
    tab = clients(secure.url)
    assert tab.identify(identifier.format(uid=uid)) == {"ok": False, "error": "unauthorized"}
    assert tab.disconnected.wait(5)
    assert tab.errors == [{"error": "unauthorized"}]
    r.publish(f"rm.users.{uid}", "not for you")
    wait_until(lambda: r.llen(f"rm:users:{uid}:messages") == 1, 5, "queued, not delivered")
    assert tab.messages == []


def test_secure_mode_rejects_a_user_without_a_key(secure, clients, uid, r):
    tab = clients(secure.url)
    assert tab.identify(f"{uid}:anything") == {"ok": False, "error": "unauthorized"}


def test_keys_never_appear_in_logs(secure, clients, r, uid):
    r.set(f"rm:users:{uid}:key", "TOPSECRETKEY")
    clients(secure.url).identify(f"{uid}:WRONGKEYVALUE")
    clients(secure.url, f"{uid}:TOPSECRETKEY")
    log = secure.log()
    assert "TOPSECRETKEY" not in log and "WRONGKEYVALUE" not in log
    assert f"Assigning id {uid}" in log
