"""Who may identify as whom: keys, tokens, and the limits on failed tries (SPEC §4, §5.7)."""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

import redis

from . import names
from .config import Config
from .ratelimit import IdentifyLimits, RateLimited
from .tokens import MAX_TOKEN, TokenError, verify

log = logging.getLogger("rm_flask")

# How long an address that passed the screen is let through without asking Redis again.
# A reconnect storm from one address (a restart, a NAT) would otherwise cost a round trip
# per socket, on the pool everything else needs. Safe to reuse: the screen only refuses
# early; secure mode counts and checks every attempt atomically in `authenticate`, and a
# refusal here forgets the address at once.
SCREEN_REUSE = 1.0
SCREENED_AT_MOST = 10_000  # addresses remembered; past that all are forgotten at once


class IdentifyError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class Gate:
    """Checks credentials in secure mode and counts failures in Redis, for every process."""

    def __init__(self, config: Config, client: redis.Redis) -> None:
        self.config = config
        self.client = client
        self.limits = IdentifyLimits(client, config.identify_failures_per_uid,
                                     config.identify_failures_per_address)
        self._passed: dict[str, float] = {}  # address -> when its screen stops counting
        if config.token_secret and not config.secure_mode:
            log.warning("token_secret is set but secure_mode is false: any uid is accepted "
                        "without a key or token")

    def screen(self, host: str) -> None:
        """Before the identifier is read: refuse an address that is at its limit."""
        now = time.monotonic()
        if self._passed.get(host, 0.0) > now:
            return
        try:
            self.limits.check_address(host)
        except RateLimited:
            raise IdentifyError("rate_limited") from None
        except redis.RedisError as exc:
            # Let the handler decide what a Redis it cannot reach means (hold or refuse);
            # in secure mode `authenticate` checks this limit again before any key.
            log.debug("could not check the identify limit of %s: %s", host, exc)
            return
        if len(self._passed) >= SCREENED_AT_MOST:
            self._passed.clear()
        self._passed[host] = now + SCREEN_REUSE

    def authenticate(self, uid: str, key: str | None, data: Any, host: str) -> None:
        """Secure mode: let `uid` in only with its key or a token for it, and count what fails.

        A token comes as `{"uid", "token"}` (never with a key too). Outside secure mode the
        uid is enough and credentials are not looked at, as before tokens.
        """
        token = data.get("token") if isinstance(data, dict) else None
        if token is not None and (key is not None or not isinstance(token, str) or len(token) > MAX_TOKEN):
            raise IdentifyError("invalid_identifier")
        if not self.config.secure_mode:
            return
        try:
            self.limits.attempt(uid, host)
        except RateLimited:
            raise IdentifyError("rate_limited") from None
        except redis.RedisError:
            raise IdentifyError("unavailable") from None
        try:
            if token is not None:
                self._check_token(uid, token)
            else:
                check_key(self.client, uid, key)
        except IdentifyError as exc:
            if exc.code == "unavailable":
                self._forgive(uid, host)  # not the client's failure
            raise
        self._forgive(uid, host)

    def refused(self, host: str, code: str) -> None:
        """After a refusal: an identifier that names no valid uid counts against its address."""
        self._passed.pop(host, None)
        if code != "invalid_identifier":
            return
        try:
            self.limits.fail_address(host)
        except redis.RedisError as exc:
            log.debug("could not count a failed identify from %s: %s", host, exc)

    def _check_token(self, uid: str, token: str) -> None:
        config = self.config
        try:
            verify(token, uid, config.token_secret or (), config.token_algorithms, config.token_leeway)
        except TokenError as exc:
            log.info("Token for %r refused: %s", uid[:40], exc.reason)
            raise IdentifyError("unauthorized") from None

    def _forgive(self, uid: str, host: str) -> None:
        try:
            self.limits.forgive(uid, host)
        except redis.RedisError as exc:
            log.debug("could not take back a counted identify: %s", exc)


def check_key(client: redis.Redis, uid: str, key: str | None) -> None:
    """The key must equal `rm:users:$uid:key`, compared in constant time."""
    try:
        stored = client.get(names.user_key_key(uid))
    except redis.RedisError:
        raise IdentifyError("unavailable") from None
    # surrogatepass: a key with a lone surrogate is a wrong key, not a crash.
    if stored is None or not key or not hmac.compare_digest(key.encode("utf-8", "surrogatepass"), stored):
        raise IdentifyError("unauthorized")
