"""uids and channel names that are not what they seem (issue #16 items 3 and 4, SPEC §4):
lone surrogates, bytes that are not UTF-8. One hostile socket must not fail an `up`, a
resubscribe or anyone else's identify, and a channel that is not UTF-8 reaches nobody."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rm_flask import names
from tests.support.clients import RMClient, connected
from tests.support.processes import ServerProcess, start_redis, wait_until

# Every code point, lone surrogates included (hypothesis leaves them out by default).
ANY_CHAR = st.characters(codec=None, categories=None, exclude_categories=())
UIDS = st.one_of(
    st.text(ANY_CHAR, min_size=0, max_size=300),
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
    .map(lambda s: "user" + s),
)


def allowed(uid: str) -> bool:
    """SPEC §4, written from the sentence, not from names.py."""
    if not 1 <= len(uid) <= 256:
        return False
    for ch in uid:
        code = ord(ch)
        if ch == ":" or ch.isspace() or code < 0x20 or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xDFFF:
            return False
    return True


@given(UIDS)
@settings(max_examples=2000, deadline=None)
def test_valid_id_follows_the_rule(uid):
    assert names.valid_id(uid) == allowed(uid)


def test_the_strategy_reaches_lone_surrogates():
    found = []

    @given(UIDS)
    @settings(max_examples=300, deadline=None, database=None)
    def sample(uid):
        if any(0xD800 <= ord(c) <= 0xDFFF for c in uid):
            found.append(uid)

    sample()
    assert found, "the strategy must produce uids with lone surrogates"


@pytest.fixture
def own(tmp_path: Path, logs_dir: Path):
    """A Redis of the test's own (without persistence, so a restart comes back empty) and a
    server on it."""
    redis_server = start_redis(tmp_path / "redis", persist=False)
    # Every hostile identify is a failure from this one address: lift that limit here.
    server = ServerProcess(redis_server.port, logs_dir, identify_failures_per_address=100_000).start()
    yield redis_server, server
    server.stop()
    redis_server.stop()


@pytest.mark.slow
def test_hostile_uids_then_a_lost_subscription_and_a_redis_restart(own):
    redis_server, server = own
    r = redis.Redis(port=redis_server.port)
    hostile: list[RMClient] = []
    replies: list[tuple[str, object]] = []

    @given(UIDS)
    @settings(max_examples=40, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    def identify(uid):
        tab = RMClient(server.url).connect()
        hostile.append(tab)
        reply = tab.identify({"uid": uid})
        replies.append((uid, reply))
        # What the server reads: JSON joins a surrogate pair into one character.
        sent = json.loads(json.dumps(uid))
        want = {"ok": True, "uid": sent} if allowed(sent) else {"ok": False, "error": "invalid_identifier"}
        assert reply == want, repr(uid)

    try:
        identify()
        for uid in ("x\ud800", "\udfff", "a\udc80b", "ok\ud83d"):  # the issue's, and their kin
            tab = RMClient(server.url).connect()
            hostile.append(tab)
            assert tab.identify({"uid": uid, "ack": True}) == {"ok": False, "error": "invalid_identifier"}
        # The subscription drops, then Redis restarts without its data: each time the
        # server announces itself and its sockets again.
        assert r.client_kill_filter(_type="pubsub") >= 1
        wait_until(lambda: server.health()[0] == 200 and server.metric("rm_redis_reconnects_total") >= 1,
                   15, "resubscribed after CLIENT KILL")
        redis_server.stop()
        redis_server.start()
        wait_until(lambda: server.health()[0] == 200 and server.metric("rm_redis_reconnects_total") >= 2,
                   20, "resubscribed after the Redis restart")
        normal = connected(server.url, {"uid": "normal-user", "ack": True})
        for n in range(50):
            assert r.publish("rm.users.normal-user", f"m{n}") == 1
        got = normal.wait_for(50, timeout=30)
        assert [m["payload"] for m in got] == [f"m{n}" for n in range(50)]
        normal.close()
        log = server.log()
        assert "Traceback" not in log and "Failed to" not in log, log[-3000:]
    finally:
        for tab in hostile:
            tab.close()


def test_a_channel_that_is_not_utf8_reaches_nobody(r, server, clients):
    replacement = clients(server.url, {"uid": "\ufffd", "ack": True})
    before = server.metric('rm_messages_invalid_total{reason="channel"}')
    assert r.publish(b"rm.users.\xff", "for nobody") == 1
    assert r.publish(b"rm.channels.\xfe\xff", "for no group") == 1
    wait_until(lambda: server.metric('rm_messages_invalid_total{reason="channel"}') >= before + 2, 10,
               "both PUBLISHes ignored as invalid channels")
    assert r.publish("rm.users.\ufffd", "for U+FFFD") == 1
    # Per user, order holds: a wrongly mapped message would have arrived before this one.
    wait_until(lambda: "for U+FFFD" in replacement.payloads(), 10, "the message for U+FFFD")
    assert replacement.payloads() == ["for U+FFFD"]
    assert r.llen("rm:users:\ufffd:messages") == 0
