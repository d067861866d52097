"""Load, validate and hold the server's configuration (SPEC §6).

Configuration is read once at start-up into one frozen `Config`; nothing else in the
package reads the environment. Order of precedence: defaults, then the JSON file, then
`RM_*` environment variables.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")
# The admin page's password: long enough that guessing it over HTTP is hopeless.
MIN_ADMIN_TOKEN = 16
# HMAC only: the secret both signs and verifies. "none" is never accepted.
# RFC 7518 §3.2: an HMAC key at least as long as the hash it is used with.
TOKEN_ALGORITHMS = {"HS256": 32, "HS384": 48, "HS512": 64}
MIN_SECRET = 32


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


@dataclass(frozen=True)
class Config:
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    redis_url: str | None = None
    ws_port: int = 8080
    secure_mode: bool = False
    rm_route: str = "/rm"
    queue_expiry: int = 604800
    conn_limit: int = 10000
    user_conn_limit: int = 6
    max_queue_length: int = 10000
    identify_timeout: float = 10
    cors_allowed_origins: str | list[str] = "*"
    log_level: str = "info"
    # Not in the seed: the demo's publish endpoint, and where the embedded Redis keeps data.
    demo: bool = False
    data_dir: str = "var"
    # How long a socket may leave one message unacknowledged (ack mode) before we
    # give up on it, disconnect it and recommit what it held.
    ack_timeout: float = 30
    # The inbox (SPEC §9): two entries with the same `key` within this many seconds are
    # one message.
    inbox_key_ttl: int = 86400
    # Messages handed to a socket per drain step; the next step waits for acks.
    drain_batch: int = 100
    # Hostile input: larger PUBLISHes are dropped (logged, counted); a socket with more
    # packets than this waiting to be written is too slow and is closed; failed identifies
    # per minute, per uid and per client address, before `rate_limited`.
    max_payload: int = 1024 * 1024
    max_buffered: int = 1000
    identify_failures_per_uid: int = 10
    identify_failures_per_address: int = 50
    # Engine.IO heartbeats: a socket that answers no ping for ping_interval + ping_timeout
    # seconds (a half-open TCP connection, a frozen tab) is closed and its messages given
    # back.
    ping_interval: float = 25
    ping_timeout: float = 20
    # Signed identify tokens (JWT, SPEC §6): the first secret signs, every one verifies,
    # so that a new one can be rolled out before the old one is dropped.
    token_secret: tuple[str, ...] | None = None
    token_algorithms: tuple[str, ...] = ("HS256",)
    token_leeway: float = 5
    # The operators' page (/admin): off while null; HTTP Basic, user `admin`, this password.
    admin_token: str | None = None
    # `json`: one JSON object per log line, for log pipelines.
    log_format: str = "text"

    def redis_kwargs(self) -> dict[str, Any]:
        """Arguments for `redis.Redis.from_url`."""
        if self.redis_url:
            return {"url": self.redis_url}
        return {"url": f"redis://{self.redis_host}:{self.redis_port}/0"}


# (type, check, what is expected) for every key; the check runs on the converted value.
_RULES: dict[str, tuple[type, Any, str]] = {
    "redis_host": (str, lambda v: bool(v), "a host name"),
    "redis_port": (int, lambda v: 1 <= v <= 65535, "an integer from 1 to 65535"),
    "redis_url": (
        str,
        lambda v: v is None or (v.startswith(("redis://", "rediss://", "unix://")) and _has_valid_port(v)),
        "null or a redis://, rediss:// or unix:// URL",
    ),
    "ws_port": (int, lambda v: 0 <= v <= 65535, "an integer from 0 to 65535"),
    "secure_mode": (bool, None, "true or false"),
    "rm_route": (
        str,
        lambda v: v.startswith("/") and len(v) > 1 and " " not in v,
        "a namespace starting with / such as /rm",
    ),
    "queue_expiry": (int, lambda v: v >= 1, "a whole number of seconds >= 1"),
    "conn_limit": (int, lambda v: v >= 1, "an integer >= 1"),
    "user_conn_limit": (int, lambda v: v >= 1, "an integer >= 1"),
    "max_queue_length": (int, lambda v: v >= 1, "an integer >= 1"),
    "identify_timeout": (float, lambda v: v > 0, "a number of seconds > 0"),
    "cors_allowed_origins": (list, None, '"*", an origin, or a list of origins'),
    "log_level": (str, lambda v: v in LOG_LEVELS, "one of " + ", ".join(LOG_LEVELS)),
    "demo": (bool, None, "true or false"),
    "data_dir": (str, lambda v: bool(v), "a folder path"),
    "ack_timeout": (float, lambda v: v > 0, "a number of seconds > 0"),
    "inbox_key_ttl": (int, lambda v: v >= 1, "a whole number of seconds >= 1"),
    "drain_batch": (int, lambda v: 1 <= v <= 10000, "an integer from 1 to 10000"),
    "max_payload": (int, lambda v: v >= 1, "a number of bytes >= 1"),
    "max_buffered": (int, lambda v: v >= 10, "an integer >= 10"),
    "identify_failures_per_uid": (int, lambda v: v >= 1, "an integer >= 1"),
    "identify_failures_per_address": (int, lambda v: v >= 1, "an integer >= 1"),
    "ping_interval": (float, lambda v: v >= 0.1, "a number of seconds >= 0.1"),
    "ping_timeout": (float, lambda v: v >= 0.1, "a number of seconds >= 0.1"),
    "token_secret": (list, lambda v: bool(v) and all(_size(s) >= MIN_SECRET for s in _listed(v)),
                     f"null, or a secret (or a list of them) of at least {MIN_SECRET} bytes"),
    "token_algorithms": (list, lambda v: bool(v) and all(a in TOKEN_ALGORITHMS for a in _listed(v)),
                         "one or a list of " + ", ".join(TOKEN_ALGORITHMS)),
    "token_leeway": (float, lambda v: 0 <= v <= 300, "a number of seconds from 0 to 300"),
    "admin_token": (
        str,
        lambda v: v is None or (len(v) >= MIN_ADMIN_TOKEN and v.isprintable() and v.isascii()),
        f"null or at least {MIN_ADMIN_TOKEN} printable ASCII characters",
    ),
    "log_format": (str, lambda v: v in LOG_FORMATS, "one of " + ", ".join(LOG_FORMATS)),
}

_NULLABLE = {"redis_url", "token_secret", "admin_token"}
# Shown as <hidden> in errors: a config error must not print a secret.
_SECRETS = {"token_secret", "admin_token"}
# Read as a string or a list, kept as a tuple.
_TUPLES = {"token_secret", "token_algorithms"}


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def _size(secret: str) -> int:
    """A secret's length in UTF-8 bytes; 0 if it cannot be encoded (a lone surrogate)."""
    try:
        return len(secret.encode("utf-8"))
    except UnicodeEncodeError:
        return 0


def _has_valid_port(url: str) -> bool:
    # redis-py would only fail on `redis://host:notaport` when it first connects, with a
    # traceback; here it is one line at start-up like every other bad value.
    try:
        urlsplit(url).port  # noqa: B018 (reading the port is what parses it)
    except ValueError:
        return False
    return True


def _convert(key: str, value: Any, from_env: bool) -> Any:
    kind, check, expected = _RULES[key]
    shown = "<hidden>" if key in _SECRETS and value is not None else repr(value)
    bad = ConfigError(f"config: {key}={shown} is invalid: expected {expected}")
    if value is None or (from_env and key in _NULLABLE and value in ("", "null")):
        if key in _NULLABLE:
            return None
        raise bad
    if kind is bool:
        if isinstance(value, bool):
            return value
        if from_env and isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise bad
    if kind in (int, float):
        if from_env and isinstance(value, str):
            try:
                value = kind(value)
            except ValueError:
                raise bad from None
        # bool is an int to Python, never to us; an int is a fine float.
        if isinstance(value, bool) or not isinstance(value, int if kind is int else (int, float)):
            raise bad
        value = kind(value)
    elif kind is list:
        if from_env and isinstance(value, str) and value.startswith("["):
            try:
                value = json.loads(value)
            except ValueError:
                raise bad from None
        if isinstance(value, list):
            if not all(isinstance(v, str) and v for v in value):
                raise bad
        elif not (isinstance(value, str) and value):
            raise bad
    elif kind is str and not isinstance(value, str):
        raise bad
    if check is not None and not check(value):
        raise bad
    if key in _TUPLES:
        return tuple(_listed(value))
    return value


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the one `Config` from defaults, a JSON file, `RM_*` variables and overrides.

    `path` defaults to `RM_CONFIG`, then to `config.json` in the working folder if present.
    Raises `ConfigError` with a one-line message naming the key, the value and what was
    expected.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    file_path = path or environ.get("RM_CONFIG")
    if file_path is None and Path("config.json").is_file():
        file_path = "config.json"
    if file_path is not None:
        try:
            raw = json.loads(Path(file_path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"config: cannot read {file_path}: {exc.strerror}") from None
        except ValueError as exc:
            raise ConfigError(f"config: {file_path} is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config: {file_path} must hold a JSON object")
        for key, value in raw.items():
            if key.startswith("_"):  # "_comment" keys are allowed in the file
                continue
            if key not in _RULES:
                raise ConfigError(f"config: unknown key {key!r} in {file_path}")
            values[key] = _convert(key, value, from_env=False)
    for key in _RULES:
        env_key = "RM_" + key.upper()
        if env_key in environ:
            values[key] = _convert(key, environ[env_key], from_env=True)
    for key, value in (overrides or {}).items():
        if key not in _RULES:
            raise ConfigError(f"config: unknown key {key!r}")
        values[key] = _convert(key, value, from_env=False)
    config = dataclasses.replace(Config(), **values)
    _check_token_secret(config)
    return config


def _check_token_secret(config: Config) -> None:
    """Every secret must be long enough for the longest hash it may be used with."""
    if not config.token_secret:
        return
    algorithm = max(config.token_algorithms, key=TOKEN_ALGORITHMS.__getitem__)
    need = TOKEN_ALGORITHMS[algorithm]
    if any(_size(secret) < need for secret in config.token_secret):
        raise ConfigError(f"config: token_secret=<hidden> is invalid: expected secrets of at least "
                          f"{need} bytes for {algorithm}")
