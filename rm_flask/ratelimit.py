"""Counting failed identifies, so that guessing keys and tokens is slow.

The counts live in Redis (`rm:limits:...`), so every process sharing it counts the same
guesses, and a restart forgives nothing. Fixed windows: a count starts with its first
failure and expires `window` seconds later; what matters is the order of magnitude of
guesses a minute.
"""

from __future__ import annotations

import redis

from . import names

# Count an attempt as failed before its key is checked, unless the uid or the address is
# already at its limit. One script, so that guesses sent at the same moment to several
# processes cannot all read "under the limit" before any of them has counted.
# Returns 0 when counted, 1 when the uid is at its limit, 2 when the address is.
_ATTEMPT = """
local uid_key, address_key = KEYS[1], KEYS[2]
local uid_limit, address_limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local window_ms = tonumber(ARGV[3])
if tonumber(redis.call('GET', uid_key) or '0') >= uid_limit then return 1 end
if tonumber(redis.call('GET', address_key) or '0') >= address_limit then return 2 end
for _, key in ipairs(KEYS) do
  if redis.call('INCR', key) == 1 then redis.call('PEXPIRE', key, window_ms) end
end
return 0
"""

# Count one failure; the window starts with the first. Atomic so that a count can never
# be left without its expiry (a process dying between INCR and PEXPIRE would lock the
# key out for good).
_FAIL = """
local key, window_ms = KEYS[1], tonumber(ARGV[1])
local count = redis.call('INCR', key)
if count == 1 then redis.call('PEXPIRE', key, window_ms) end
return count
"""

# Take back attempts counted in advance. Atomic so that the check for a count that
# expired meanwhile and the decrement are one step: DECR on a missing key would make a
# count of -1 that never expires.
_FORGIVE = """
for _, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') > 0 then redis.call('DECR', key) end
end
return 0
"""


class RateLimited(Exception):
    """The uid or the client address has failed too often in this window."""


class IdentifyLimits:
    """At most `per_uid` failed identifies for a uid, and `per_address` from one client
    address, in each `window` seconds, across every process on the Redis."""

    def __init__(self, client: redis.Redis, per_uid: int, per_address: int, window: float = 60.0) -> None:
        self.client = client
        self.per_uid = per_uid
        self.per_address = per_address
        self.window_ms = int(window * 1000)
        self._attempt = client.register_script(_ATTEMPT)
        self._fail = client.register_script(_FAIL)
        self._forgive = client.register_script(_FORGIVE)

    def check_address(self, host: str) -> None:
        """Raise RateLimited if `host` is at its limit (before its identifier is read)."""
        count = self.client.get(names.identify_failures_key("address", host))
        if count is not None and int(count) >= self.per_address:
            raise RateLimited()

    def attempt(self, uid: str, host: str) -> None:
        """Count a credential check as failed before it runs; RateLimited if over a limit.

        Counting first means that guesses sent in parallel cannot all be checked while
        the earlier ones are still out; `forgive` undoes it when the check passes.
        """
        keys = [names.identify_failures_key("uid", uid), names.identify_failures_key("address", host)]
        if self._attempt(keys=keys, args=[self.per_uid, self.per_address, self.window_ms]) != 0:
            raise RateLimited()

    def forgive(self, uid: str, host: str) -> None:
        keys = [names.identify_failures_key("uid", uid), names.identify_failures_key("address", host)]
        self._forgive(keys=keys)

    def fail_address(self, host: str) -> None:
        """Count a failure against `host` alone (an identifier that names no valid uid)."""
        self._fail(keys=[names.identify_failures_key("address", host)], args=[self.window_ms])
