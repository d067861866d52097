"""Configuration: defaults, file, RM_* overrides, and one clear line for a bad value."""

from __future__ import annotations

import json

import pytest

from rm_flask.config import Config, ConfigError, load_config


def test_defaults_match_the_spec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no config.json here
    config = load_config(environ={})
    assert config == Config()
    assert (config.redis_port, config.ws_port, config.user_conn_limit, config.queue_expiry) == (
        6379, 8080, 6, 604800)
    assert config.rm_route == "/rm" and config.secure_mode is False


def test_shipped_config_json_is_valid():
    from tests.support.processes import ROOT

    config = load_config(ROOT / "config.json", environ={})
    assert config.demo is True and config.ws_port == 8080


def test_environment_overrides_the_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"redis_port": 7000, "secure_mode": False}))
    config = load_config(path, environ={"RM_REDIS_PORT": "6380", "RM_SECURE_MODE": "true",
                                        "RM_CORS_ALLOWED_ORIGINS": '["http://a.example"]'})
    assert config.redis_port == 6380 and config.secure_mode is True
    assert config.cors_allowed_origins == ["http://a.example"]


def test_rm_config_names_the_file(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"ws_port": 9001}))
    assert load_config(environ={"RM_CONFIG": str(path)}).ws_port == 9001


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RM_REDIS_PORT": "abc"},
         "config: redis_port='abc' is invalid: expected an integer from 1 to 65535"),
        ({"RM_REDIS_PORT": "70000"}, "redis_port='70000'"),
        ({"RM_SECURE_MODE": "maybe"}, "secure_mode='maybe' is invalid: expected true or false"),
        ({"RM_RM_ROUTE": "rm"}, "rm_route='rm'"),
        ({"RM_LOG_LEVEL": "loud"}, "log_level='loud'"),
        ({"RM_REDIS_URL": "http://x"}, "redis_url='http://x'"),
        ({"RM_USER_CONN_LIMIT": "0"}, "user_conn_limit='0'"),
    ],
)
def test_bad_values_name_key_value_and_expectation(tmp_path, monkeypatch, environ, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_config(environ=environ)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_file_values_and_unknown_keys(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"redis_port": "6379"}))
    with pytest.raises(ConfigError, match="redis_port='6379'"):
        load_config(path, environ={})
    path.write_text(json.dumps({"redis_prot": 6379}))
    with pytest.raises(ConfigError, match="unknown key 'redis_prot'"):
        load_config(path, environ={})
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(path, environ={})


### Tokens ###

SECRET = "a-secret-of-32-bytes-or-more-...."


def test_token_keys_default_and_read_a_string_or_a_list(tmp_path):
    assert (Config().token_secret, Config().token_algorithms, Config().token_leeway) == (None, ("HS256",), 5)
    assert load_config(environ={"RM_TOKEN_SECRET": SECRET}).token_secret == (SECRET,)
    both = load_config(environ={"RM_TOKEN_SECRET": json.dumps([SECRET, SECRET + "old"])})
    assert both.token_secret == (SECRET, SECRET + "old")
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"token_secret": [SECRET * 2], "token_algorithms": ["HS256", "HS384"],
                                "token_leeway": 0}))
    config = load_config(path, environ={})
    assert config.token_algorithms == ("HS256", "HS384") and config.token_leeway == 0
    hs512 = load_config(environ={"RM_TOKEN_ALGORITHMS": "HS512", "RM_TOKEN_SECRET": SECRET * 2})
    assert hs512.token_algorithms == ("HS512",)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RM_TOKEN_SECRET": "short"}, "token_secret=<hidden> is invalid: expected null, or a secret"),
        ({"RM_TOKEN_SECRET": "[]"}, "token_secret=<hidden> is invalid"),
        ({"RM_TOKEN_SECRET": json.dumps([SECRET, "short"])}, "token_secret=<hidden>"),
        ({"RM_TOKEN_ALGORITHMS": "none"},
         "token_algorithms='none' is invalid: expected one or a list of HS256"),
        ({"RM_TOKEN_ALGORITHMS": '["HS256", "RS256"]'}, "token_algorithms="),
        ({"RM_TOKEN_LEEWAY": "-1"}, "token_leeway='-1'"),
        ({"RM_TOKEN_SECRET": SECRET, "RM_TOKEN_ALGORITHMS": "HS512"},
         "token_secret=<hidden> is invalid: expected secrets of at least 64 bytes for HS512"),
    ],
)
def test_bad_token_values_never_show_the_secret(tmp_path, monkeypatch, environ, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_config(environ=environ)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert "short" not in str(err.value) and SECRET not in str(err.value)


def test_admin_token_and_log_format(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config(environ={}).admin_token is None and load_config(environ={}).log_format == "text"
    config = load_config(environ={"RM_ADMIN_TOKEN": "x" * 16, "RM_LOG_FORMAT": "json"})
    assert config.admin_token == "x" * 16 and config.log_format == "json"
    assert load_config(environ={"RM_ADMIN_TOKEN": "null"}).admin_token is None
    for bad in ("x" * 15, "tab\tinside-a-long-token", "ünïcode-ünïcode-ünïcode"):
        with pytest.raises(ConfigError) as err:
            load_config(environ={"RM_ADMIN_TOKEN": bad})
        # A password is never shown.
        assert str(err.value) == ("config: admin_token=<hidden> is invalid: expected null "
                                  "or at least 16 printable ASCII characters")
    with pytest.raises(ConfigError, match="log_format='xml' is invalid: expected one of text, json"):
        load_config(environ={"RM_LOG_FORMAT": "xml"})


def test_a_redis_url_with_a_bad_port_is_refused_at_start_up(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="redis_url='redis://h:port/0' is invalid"):
        load_config(environ={"RM_REDIS_URL": "redis://h:port/0"})
    assert load_config(environ={"RM_REDIS_URL": "unix:///run/redis.sock"}).redis_url == "unix:///run/redis.sock"
    assert load_config(environ={"RM_REDIS_URL": "rediss://u:p@h:6380/1"}).redis_url == "rediss://u:p@h:6380/1"
