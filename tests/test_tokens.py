"""Signed, expiring identify tokens (issue 14, SPEC §4 and §6): real servers, real sockets."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections import Counter

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rm_flask.tokens import TokenError, token_for, verify
from tests.support.processes import ROOT
from tests.test_hostile import RawClient

SECRET = "new-secret-" + "n" * 32
OLD_SECRET = "old-secret-" + "o" * 32
WRONG = "wrong-secret-" + "w" * 32


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def signed(claims: dict, secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


@pytest.fixture(scope="module")
def secure(redis_server, logs_dir):
    from tests.support.processes import ServerProcess

    proc = ServerProcess(redis_server.port, logs_dir, secure_mode=True, token_leeway=2,
                         token_secret=json.dumps([SECRET, OLD_SECRET])).start()
    yield proc
    proc.stop()


def identify(server, identifier):
    client = RawClient(server.url)
    try:
        return client.identify(identifier), client.errors
    finally:
        client.close()


def test_a_valid_token_identifies_and_the_socket_is_served(secure, clients, r, uid):
    tab = clients(secure.url)
    assert tab.identify({"uid": uid, "token": token_for(uid, secret=SECRET), "ack": True}) == {
        "ok": True, "uid": uid}
    r.publish(f"rm.users.{uid}", "signed in with a token")
    assert [m["payload"] for m in tab.wait_for(1)] == ["signed in with a token"]


def test_keys_keep_working_beside_tokens(secure, clients, r, uid):
    r.set(f"rm:users:{uid}:key", "s3cret")
    clients(secure.url, f"{uid}:s3cret")
    clients(secure.url, {"uid": uid, "key": "s3cret", "ack": True})
    assert identify(secure, {"uid": uid, "key": "wrong"})[0] == {"ok": False, "error": "unauthorized"}


def bad_tokens(uid: str) -> dict[str, str]:
    now = int(time.time())
    return {
        "expired": signed({"sub": uid, "exp": now - 60}),
        "not yet valid (nbf)": signed({"sub": uid, "exp": now + 600, "nbf": now + 300}),
        "issued in the future": signed({"sub": uid, "exp": now + 600, "iat": now + 300}),
        "wrong secret": token_for(uid, secret=WRONG),
        "alg none": b64({"alg": "none", "typ": "JWT"}) + "." + b64({"sub": uid, "exp": now + 600}) + ".",
        "alg none, signed": b64({"alg": "none"}) + "." + b64({"sub": uid, "exp": now + 600}) + ".abc",
        "HS512, not in the list": signed({"sub": uid, "exp": now + 600}, algorithm="HS512",
                                         secret=SECRET + "x" * 32),
        "another user's": token_for(uid + "-other", secret=SECRET),
        "meant for an audience": signed({"sub": uid, "exp": now + 600, "aud": "another-service"}),
        "no exp": signed({"sub": uid}),
        "no sub": signed({"exp": now + 600}),
        "sub not a string": signed({"sub": 7, "exp": now + 600}),
        "exp not a number": signed({"sub": uid, "exp": "tomorrow"}),
        "garbage": "garbage",
        "three dots": "a.b.c",
        "bad base64": b64({"alg": "HS256"}) + ".!!!!.abc",
        "header not JSON": "bm90IGpzb24." + b64({"sub": uid}) + ".sig",
        "lone surrogate": "a\ud800.b.c",
        "empty": "",
        "4 KB": "x" * 4096,
    }


@pytest.mark.parametrize("case", list(bad_tokens("u")), ids=str)
def test_a_bad_token_is_unauthorized_and_harms_no_one(secure, clients, r, uid, case):
    bystander = clients(secure.url, {"uid": f"{uid}-ok", "token": token_for(f"{uid}-ok", secret=SECRET)})
    token = bad_tokens(uid)[case]
    reply, errors = identify(secure, {"uid": uid, "token": token, "ack": True})
    assert reply == {"ok": False, "error": "unauthorized"}, case
    assert errors == [{"error": "unauthorized"}]
    r.publish(f"rm.users.{uid}-ok", "still here")
    assert [m["payload"] for m in bystander.wait_for(1)] == ["still here"]
    log = secure.log()
    assert f"Token for '{uid[:40]}' refused: " in log
    for part in [token, *token.split(".")]:
        if len(part) >= 8:
            assert part not in log, "no token, nor any part of one, is logged"


@pytest.mark.parametrize("identifier", [
    {"token": 5}, {"token": None, "key": 5}, {"token": ["a"]}, {"token": "t", "key": "k"},
    {"token": "x" * 5000},
], ids=repr)
def test_a_token_of_the_wrong_shape_is_an_invalid_identifier(secure, uid, identifier):
    assert identify(secure, {"uid": uid, **identifier})[0] == {"ok": False, "error": "invalid_identifier"}


def test_leeway_forgives_a_little_clock_skew_and_no_more(secure, uid):
    now = int(time.time())
    assert identify(secure, {"uid": uid, "token": signed({"sub": uid, "exp": now - 1})})[0]["ok"] is True
    assert identify(secure, {"uid": uid, "token": signed({"sub": uid, "exp": now - 10})})[0] == {
        "ok": False, "error": "unauthorized"}


def test_bad_tokens_are_counted_like_wrong_keys(make_server, r, uid):
    server = make_server(secure_mode=True, token_secret=SECRET, identify_failures_per_uid=10,
                         identify_failures_per_address=100_000, log_level="warning")
    replies = [identify(server, {"uid": uid, "token": token_for(uid, secret=WRONG)})[0] for _ in range(12)]
    assert [reply["error"] for reply in replies] == ["unauthorized"] * 10 + ["rate_limited"] * 2
    # The right token is refused too, for the rest of the minute: guessing is slowed down.
    assert identify(server, {"uid": uid, "token": token_for(uid, secret=SECRET)})[0] == {
        "ok": False, "error": "rate_limited"}


def test_the_hs256_token_against_an_hs512_only_server(make_server, uid):
    server = make_server(secure_mode=True, token_secret=SECRET + "x" * 32, token_algorithms="HS512",
                         log_level="info")
    hs256 = token_for(uid, secret=SECRET + "x" * 32, algorithm="HS256")
    assert identify(server, {"uid": uid, "token": hs256})[0] == {"ok": False, "error": "unauthorized"}
    assert "refused: algorithm not allowed" in server.log()
    hs512 = token_for(uid, secret=SECRET + "x" * 32, algorithm="HS512")
    assert identify(server, {"uid": uid, "token": hs512})[0] == {"ok": True, "uid": uid}


def test_rotation_old_tokens_pass_while_their_secret_is_listed(make_server, uid):
    """Roll out a new secret first in the list (signing), keep the old one (verifying)
    until the old tokens have expired, then drop it."""
    old_token = token_for(uid, secret=OLD_SECRET)
    new_token = token_for(uid, secret=SECRET)
    both = make_server(secure_mode=True, token_secret=json.dumps([SECRET, OLD_SECRET]))
    assert identify(both, {"uid": uid, "token": old_token})[0] == {"ok": True, "uid": uid}
    assert identify(both, {"uid": uid, "token": new_token})[0] == {"ok": True, "uid": uid}
    only_new = make_server(secure_mode=True, token_secret=SECRET)
    assert identify(only_new, {"uid": uid, "token": old_token})[0] == {"ok": False, "error": "unauthorized"}
    assert identify(only_new, {"uid": uid, "token": new_token})[0] == {"ok": True, "uid": uid}


def test_the_token_command_prints_a_token_the_server_takes(secure, tmp_path, uid):
    env = {"PATH": "/usr/bin:/bin", "RM_TOKEN_SECRET": SECRET, "RM_CONFIG": str(tmp_path / "none.json")}
    (tmp_path / "none.json").write_text("{}")
    done = subprocess.run([sys.executable, "-m", "rm_flask", "token", uid, "--ttl", "30"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == uid and claims["exp"] - claims["iat"] == 30
    assert identify(secure, {"uid": uid, "token": token})[0] == {"ok": True, "uid": uid}

    for args, message in [([uid, "--ttl", "0"], "ttl must be"), (["a:b"], "not a valid uid")]:
        bad = subprocess.run([sys.executable, "-m", "rm_flask", "token", *args], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=30)
        assert bad.returncode == 2 and message in bad.stderr and bad.stdout == ""
    unset = subprocess.run([sys.executable, "-m", "rm_flask", "token", uid], cwd=ROOT,
                           env={**env, "RM_TOKEN_SECRET": ""}, capture_output=True, text=True, timeout=30)
    assert unset.returncode == 2 and unset.stderr.count("\n") == 1 and "token_secret" in unset.stderr


def test_token_for_reads_the_config_and_checks_its_arguments(monkeypatch, tmp_path, uid):
    monkeypatch.setenv("RM_CONFIG", str(tmp_path / "config.json"))
    (tmp_path / "config.json").write_text(json.dumps({"token_secret": [SECRET, OLD_SECRET]}))
    import rm_flask

    token = rm_flask.token_for(uid, ttl=60)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])  # the first secret signs
    assert claims["sub"] == uid and 59 <= claims["exp"] - time.time() <= 61
    for bad in [dict(uid="a b"), dict(uid=uid, ttl=0), dict(uid=uid, ttl=1.5), dict(uid=uid, secret="short")]:
        with pytest.raises(ValueError):
            rm_flask.token_for(**bad)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="token_secret is not set"):
        rm_flask.token_for(uid)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
                 st.lists(st.text(alphabet="abcXYZ019-_=.", max_size=60), min_size=1, max_size=5)
                 .map(".".join)))
def test_verify_never_fails_otherwise_than_with_token_error(token):
    """Beside the real tests above: whatever arrives as a token, the answer is a TokenError."""
    with pytest.raises(TokenError):
        verify(token, "u", [SECRET], ["HS256"])


def test_random_tokens_over_the_wire_never_crash_the_server(make_server, uid):
    server = make_server(secure_mode=True, token_secret=SECRET, identify_failures_per_uid=100_000,
                         identify_failures_per_address=100_000, log_level="warning")
    jwt_like = st.lists(st.text(alphabet="abcdefXYZ0189-_=+/", max_size=80), min_size=2, max_size=4)
    latin1 = st.binary(max_size=120).map(lambda b: b.decode("latin-1"))
    answers = []

    @settings(max_examples=150, deadline=None)
    @given(st.one_of(st.text(max_size=200), jwt_like.map(".".join), latin1))
    def check(token):
        reply = identify(server, {"uid": uid, "token": token})[0]
        answers.append(reply and reply["error"])
        assert reply == {"ok": False, "error": "unauthorized"}, repr(token)

    check()
    print("answers:", dict(Counter(answers)))
    good = token_for(uid, secret=SECRET)
    assert identify(server, {"uid": uid, "token": good})[0] == {"ok": True, "uid": uid}
    assert "Traceback" not in server.log() and "Exception" not in server.log()


def test_a_key_with_a_lone_surrogate_is_a_wrong_key_not_a_crash(secure, r, uid):
    r.set(f"rm:users:{uid}:key", "s3cret")
    assert identify(secure, {"uid": uid, "key": "s3\ud800cret"})[0] == {"ok": False, "error": "unauthorized"}
    assert identify(secure, f"{uid}:\udfff")[0] == {"ok": False, "error": "unauthorized"}
    assert identify(secure, f"{uid}:s3cret")[0] == {"ok": True, "uid": uid}
