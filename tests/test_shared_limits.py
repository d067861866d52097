"""Identify failure limits shared by every process on one Redis, surviving restarts (issue 14)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from tests.support.cluster import start_servers
from tests.test_hostile import identify_many

PER_UID = 10


def identify_round_robin(servers: list[Any], identifiers: list[Any], threads: int = 1) -> list[Any]:
    """Identifier i goes to server i mod len(servers), each on a connection of its own."""
    return identify_many([s.url for s in servers], identifiers, threads)


def outcome(replies: list[Any]) -> Counter:
    return Counter(reply["error"] if reply and not reply["ok"] else repr(reply) for reply in replies)


def test_30_wrong_keys_over_three_processes_give_10_unauthorized(make_server, r, uid):
    servers = start_servers(make_server, 3, secure_mode=True, identify_failures_per_uid=PER_UID,
                            identify_failures_per_address=100_000, log_level="warning")
    r.set(f"rm:users:{uid}:key", "RIGHTKEY")
    replies = identify_round_robin(servers, [f"{uid}:GUESS{i}" for i in range(30)])
    assert outcome(replies) == {"unauthorized": 10, "rate_limited": 20}
    assert [reply["error"] for reply in replies[:10]] == ["unauthorized"] * 10
    per_server = [outcome(replies[n::3]) for n in range(3)]
    print("per server:", [dict(c) for c in per_server])
    assert all(c["rate_limited"] > 0 for c in per_server), "every process refuses"

    # The count lives in Redis, with its window's expiry: restarts forgive nothing.
    ttl = r.pttl(f"rm:limits:identify:uid:{uid}")
    assert 0 < ttl <= 60_000
    for server in servers:
        server.restart()  # kill -9, then the same port
    for server in servers:
        assert identify_many(server.url, [f"{uid}:RIGHTKEY"]) == [{"ok": False, "error": "rate_limited"}]
    # Other users are not affected.
    r.set(f"rm:users:{uid}-other:key", "other")
    assert identify_many(servers[0].url, [f"{uid}-other:other"]) == [{"ok": True, "uid": f"{uid}-other"}]
    for server in servers:
        assert "GUESS" not in server.log() and "RIGHTKEY" not in server.log()


def test_guesses_sent_in_parallel_to_three_processes_get_exactly_the_limit(make_server, r, uid):
    """200 guesses from 20 connections at once, spread over three processes: exactly
    `identify_failures_per_uid` of them are checked (and refused); the rest are rate_limited."""
    servers = start_servers(make_server, 3, secure_mode=True, identify_failures_per_uid=PER_UID,
                            identify_failures_per_address=100_000, log_level="warning")
    r.set(f"rm:users:{uid}:key", "RIGHTKEY")
    started = time.monotonic()
    replies = identify_round_robin(servers, [f"{uid}:GUESS{i}" for i in range(200)], threads=20)
    print(f"200 guesses from 20 threads over 3 processes in {time.monotonic() - started:.1f}s: "
          f"{dict(outcome(replies))}")
    assert outcome(replies) == {"unauthorized": PER_UID, "rate_limited": 200 - PER_UID}


def test_the_address_limit_is_shared_too(make_server, r, uid):
    servers = start_servers(make_server, 3, identify_failures_per_address=20, log_level="warning")
    replies = identify_round_robin(servers, [{"uid": f"{uid}-{i}", "ack": "yes"} for i in range(30)])
    assert [reply["error"] for reply in replies] == ["invalid_identifier"] * 20 + ["rate_limited"] * 10
    for server in servers:
        assert identify_many(server.url, [uid]) == [{"ok": False, "error": "rate_limited"}]


def test_a_right_key_takes_back_its_counted_attempt(make_server, r, uid):
    """Attempts are counted before the key is checked and taken back when it passes: a user
    who signs in 30 times in a minute, on any process, is never limited."""
    servers = start_servers(make_server, 3, secure_mode=True, identify_failures_per_uid=PER_UID,
                            identify_failures_per_address=100_000, log_level="warning")
    r.set(f"rm:users:{uid}:key", "RIGHTKEY")
    replies = identify_round_robin(servers, [f"{uid}:RIGHTKEY"] * 30, threads=5)
    assert outcome(replies) == {repr({"ok": True, "uid": uid}): 30}
    assert int(r.get(f"rm:limits:identify:uid:{uid}") or 0) == 0
