"""Signed, expiring identify tokens: JWTs signed with HMAC (config `token_secret`).

The app's login view makes one with `token_for(uid)` and hands it to the page; the page's
client identifies with `{"uid", "token"}`. A token is good for the user in its `sub` until
its `exp` (give or take `token_leeway` seconds of clock skew between the app and us).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import jwt

from . import names
from .config import MIN_SECRET, TOKEN_ALGORITHMS

DEFAULT_TTL = 3600
# Larger than any token we make (about 150 bytes) with room for an app's own claims.
MAX_TOKEN = 4096

# Claims a token must carry: without `exp` a token would be a key that never expires.
_REQUIRED = ["exp", "sub"]

# What went wrong, in words safe to log: PyJWT's own messages may quote the token.
_REASONS: list[tuple[type[Exception], str]] = [
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not yet valid"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.MissingRequiredClaimError, "missing exp or sub"),
    (jwt.exceptions.InvalidSubjectError, "for another user"),
    (jwt.InvalidAudienceError, "meant for an audience (aud)"),
    (jwt.DecodeError, "malformed"),
]


class TokenError(Exception):
    """A token that does not let this uid in; `reason` is safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def token_for(uid: str, ttl: int = DEFAULT_TTL, secret: str | None = None,
              algorithm: str | None = None) -> str:
    """Sign a token that lets `uid` identify for the next `ttl` seconds.

    `secret` defaults to the first of config `token_secret`, `algorithm` to the first of
    `token_algorithms`. Raises ValueError for a bad uid or ttl, or when there is no secret.
    """
    if not names.valid_id(uid):
        raise ValueError(f"not a valid uid: {uid[:40]!r}" if isinstance(uid, str) else "uid must be a string")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
        raise ValueError(f"ttl must be a whole number of seconds >= 1, not {ttl!r}")
    if secret is None:
        from .config import load_config

        config = load_config()
        if not config.token_secret:
            raise ValueError("token_secret is not set (config.json or RM_TOKEN_SECRET)")
        secret = config.token_secret[0]
        algorithm = algorithm or config.token_algorithms[0]
    algorithm = algorithm or "HS256"
    if algorithm not in TOKEN_ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(TOKEN_ALGORITHMS)}")
    if len(secret.encode("utf-8")) < max(MIN_SECRET, TOKEN_ALGORITHMS[algorithm]):
        raise ValueError(f"the secret must be at least {TOKEN_ALGORITHMS[algorithm]} bytes for {algorithm}")
    now = int(time.time())
    return jwt.encode({"sub": uid, "iat": now, "exp": now + ttl}, secret, algorithm=algorithm)


def verify(token: object, uid: str, secrets: Sequence[str], algorithms: Sequence[str],
           leeway: float = 0) -> None:
    """Raise TokenError unless `token` is a token for `uid`, signed with one of `secrets`
    using one of `algorithms`, and not expired."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN:
        raise TokenError("malformed")
    if not secrets:
        raise TokenError("tokens are not enabled (no token_secret)")
    for secret in secrets:
        try:
            jwt.decode(token, secret, algorithms=list(algorithms), leeway=leeway, subject=uid,
                       options={"require": _REQUIRED})
            return
        except jwt.InvalidSignatureError:
            continue  # perhaps signed with the next secret (rotation)
        except jwt.InvalidTokenError as exc:
            raise TokenError(_reason(exc)) from None
        except (ValueError, TypeError, OverflowError):
            raise TokenError("malformed") from None
    raise TokenError("bad signature")


def _reason(exc: Exception) -> str:
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    return "invalid"
