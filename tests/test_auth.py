"""rm_flask/auth.py's screen against the real redis-server: an address that passed is let
through for a moment without a round trip, and a refusal forgets it at once."""

from __future__ import annotations

import redis

from rm_flask.auth import Gate, IdentifyError
from rm_flask.config import Config


def refused(gate: Gate, host: str) -> bool:
    try:
        gate.screen(host)
    except IdentifyError as exc:
        assert exc.code == "rate_limited"
        return True
    return False


def test_a_screened_address_is_reused_until_it_is_refused(r: redis.Redis) -> None:
    gate = Gate(Config(identify_failures_per_address=2), r)
    host = "10.1.0.1"
    assert not refused(gate, host)
    for _ in range(2):
        r.incr(f"rm:limits:identify:address:{host}")  # failures counted by another process
    assert not refused(gate, host), "within SCREEN_REUSE the earlier answer stands"
    gate.refused(host, "unauthorized")  # any refusal here: the next screen asks Redis
    assert refused(gate, host)
    assert not refused(gate, "10.1.0.2"), "another address is not touched"


def test_an_invalid_identifier_counts_and_the_next_screen_sees_it(r: redis.Redis) -> None:
    gate = Gate(Config(identify_failures_per_address=1), r)
    host = "10.1.0.3"
    assert not refused(gate, host)
    gate.refused(host, "invalid_identifier")
    assert refused(gate, host)
