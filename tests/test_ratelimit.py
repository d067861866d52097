"""rm_flask/ratelimit.py against the real redis-server: windows, expiry, forgiveness."""

from __future__ import annotations

import pytest

from rm_flask.ratelimit import IdentifyLimits, RateLimited
from tests.support.processes import wait_until


def limits(r, per_uid=3, per_address=5, window=0.5):
    return IdentifyLimits(r, per_uid, per_address, window=window)


def attempts(lim, uid, host, count):
    outcome = []
    for _ in range(count):
        try:
            lim.attempt(uid, host)
            outcome.append("counted")
        except RateLimited:
            outcome.append("limited")
    return outcome


def test_a_uid_is_limited_for_its_window_then_forgiven(r):
    lim = limits(r)
    assert attempts(lim, "ann", "10.0.0.1", 4) == ["counted"] * 3 + ["limited"]
    assert attempts(lim, "bob", "10.0.0.1", 1) == ["counted"], "another uid has its own count"
    assert 0 < r.pttl("rm:limits:identify:uid:ann") <= 500
    wait_until(lambda: not r.exists("rm:limits:identify:uid:ann"), 5, "the window to end")
    assert attempts(lim, "ann", "10.0.0.1", 1) == ["counted"]


def test_an_address_is_limited_across_uids(r):
    lim = limits(r, per_uid=100, per_address=5)
    for _ in range(3):
        lim.fail_address("10.0.0.2")
    assert attempts(lim, "u1", "10.0.0.2", 3) == ["counted", "counted", "limited"]
    with pytest.raises(RateLimited):
        lim.check_address("10.0.0.2")
    lim.check_address("10.0.0.3")  # others are not touched
    assert r.get("rm:limits:identify:uid:u1") == b"2", "a refused attempt is not counted"


def test_forgive_takes_back_one_and_never_goes_below_zero(r):
    lim = limits(r, window=60)
    attempts(lim, "cy", "::1", 2)
    lim.forgive("cy", "::1")
    assert r.get("rm:limits:identify:uid:cy") == b"1" and r.get("rm:limits:identify:address:::1") == b"1"
    lim.forgive("cy", "::1")
    lim.forgive("cy", "::1")
    lim.forgive("dee", "::2")  # nothing counted: nothing made
    assert r.get("rm:limits:identify:uid:cy") == b"0" and not r.exists("rm:limits:identify:uid:dee")
    for key in r.scan_iter("rm:limits:*"):
        assert r.pttl(key) > 0, f"{key!r} would never expire"
