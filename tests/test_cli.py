"""The entry points as an operator runs them: `python -m rm_flask`, `redmessenger` and gunicorn.

Every bad config value is one line naming the key, the value and what was expected, with
no traceback, and exit 2 (gunicorn's 3 for a worker that refuses to boot). `check` and
`publish` against a real redis-server and a real server.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.support.processes import ROOT, free_port, start_redis, wait_until

# What the installed `redmessenger` script runs (the shared venv has no console script:
# the wheel test runs the real one).
REDMESSENGER = [sys.executable, "-c", "import sys; from rm_flask.cli import main; sys.exit(main())"]
WORKER = "geventwebsocket.gunicorn.workers.GeventWebSocketWorker"
# gunicorn's own log lines: "[2026-12-01 21:50:05 +0000] [18774] [INFO] ..."
GUNICORN_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:]+ [+-]\d{4}\] \[\d+\] \[[A-Z]+\] ")

ENTRY_POINTS = {
    "python -m rm_flask": ([sys.executable, "-m", "rm_flask"], 2),
    "python -m rm_flask serve": ([sys.executable, "-m", "rm_flask", "serve"], 2),
    "redmessenger serve": ([*REDMESSENGER, "serve"], 2),
    "redmessenger check": ([*REDMESSENGER, "check"], 2),
    "redmessenger publish": ([*REDMESSENGER, "publish", "rm.users.u1", "hi"], 2),
    # gunicorn.conf.py refuses it in the master, before any worker.
    "gunicorn wsgi:app": ([sys.executable, "-m", "gunicorn", "wsgi:app"], 2),
    "gunicorn -c python:rm_flask.gunicorn_conf": (
        [sys.executable, "-m", "gunicorn", "-c", "python:rm_flask.gunicorn_conf", "rm_flask.wsgi:app"], 2),
    # Without our settings the worker refuses to boot, and gunicorn stops with its code 3.
    "gunicorn without gunicorn.conf.py": (
        [sys.executable, "-m", "gunicorn", "-c", "/dev/null", "-k", WORKER, "-b", "127.0.0.1:0",
         "wsgi:app"], 3),
}

BAD_VALUES = [
    ({"RM_REDIS_PORT": "notaport"}, "redis_port='notaport'", "expected an integer from 1 to 65535"),
    ({"RM_LOG_FORMAT": "xml"}, "log_format='xml'", "expected one of text, json"),
    ({"RM_REDIS_URL": "redis://127.0.0.1:notaport/0"}, "redis_url='redis://127.0.0.1:notaport/0'",
     "expected null or a redis://"),
    ({"RM_CONN_LIMIT": "0"}, "conn_limit='0'", "expected an integer >= 1"),
]


def run(cmd: list[str], env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RM_")}
    return subprocess.run(cmd, cwd=ROOT, env={**base, **env}, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def our_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """What the process printed, less gunicorn's own log lines and banners."""
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.strip() and not GUNICORN_LINE.match(line)
            and not line.startswith("!!!")]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(("env", "named", "expected"), BAD_VALUES,
                         ids=[next(iter(e)) for e, _, _ in BAD_VALUES])
def test_a_bad_value_is_one_line_and_the_exit_code(entry, env, named, expected):
    cmd, code = ENTRY_POINTS[entry]
    result = run(cmd, env)
    lines = our_lines(result)
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"config: {named} is invalid: {expected}"), lines


def test_an_admin_token_is_never_printed_even_when_refused():
    result = run([*REDMESSENGER, "check"], {"RM_ADMIN_TOKEN": "tooshort"})
    assert result.returncode == 2
    assert our_lines(result) == [
        "config: admin_token=<hidden> is invalid: expected null or at least 16 printable ASCII "
        "characters"]
    assert "tooshort" not in result.stdout + result.stderr


def test_unknown_key_in_the_named_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"redis_prot": 6379}))
    for cmd in ([sys.executable, "-m", "rm_flask", "--config", str(path)],
                [*REDMESSENGER, "serve", "--config", str(path)],
                [sys.executable, "-m", "gunicorn", "wsgi:app"]):
        result = run(cmd, {"RM_CONFIG": str(path)})
        assert result.returncode == 2, result
        assert our_lines(result) == [f"config: unknown key 'redis_prot' in {path}"]


def test_redis_unreachable_under_gunicorn_is_one_line_and_exit_3():
    # Valid config, nobody on that port: the worker refuses to boot with one line.
    port = free_port()
    result = run([sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{free_port()}", "wsgi:app"],
                 {"RM_REDIS_PORT": str(port)})
    assert result.returncode == 3, result
    lines = our_lines(result)
    assert len(lines) == 1 and lines[0].startswith(f"Cannot reach Redis at 127.0.0.1:{port}"), lines
    assert "Traceback" not in result.stderr


def test_serve_on_a_taken_port_is_one_line(redis_server):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run([*REDMESSENGER, "serve", "--host", "127.0.0.1"],
                     {"RM_REDIS_PORT": str(redis_server.port), "RM_WS_PORT": str(port),
                      "RM_LOG_LEVEL": "warning"})
    assert result.returncode == 1
    assert our_lines(result) == [
        f"serve: cannot listen on 127.0.0.1:{port} (ws_port): Address already in use"]


### check ###


def test_check_reports_what_is_ready(redis_server):
    result = run([*REDMESSENGER, "check"], {"RM_REDIS_PORT": str(redis_server.port)})
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.startswith(
        "ok       config: valid (secure_mode off, demo on, admin page off, log_format text)")
    assert re.search(rf"^ok +redis: 127\.0\.0\.1:{redis_server.port} answers, Redis \d+\.\d+", out, re.M)
    for name in ("socket.io.min.js", "uPlot.iife.min.js", "uPlot.min.css"):
        assert re.search(rf"^ok +/vendor/{re.escape(name)}: ", out, re.M), out


def test_check_fails_without_redis():
    port = free_port()
    result = run([*REDMESSENGER, "check"], {"RM_REDIS_PORT": str(port)})
    assert result.returncode == 1
    assert re.search(rf"^FAIL +redis: cannot reach 127\.0\.0\.1:{port}: ", result.stdout, re.M), result.stdout


### publish ###


def test_publish_reaches_a_tab_and_says_so(server, clients, uid):
    tab = clients(server.url, {"uid": uid, "ack": True})
    result = run([*REDMESSENGER, "publish", "--pubsub", f"rm.users.{uid}", "Hello from the shell"],
                 {"RM_REDIS_PORT": str(server.redis_port)})
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rf"published 20 bytes to rm\.users\.{re.escape(uid)}: [1-9]\d* subscriber\(s\)\n",
                        result.stdout)
    tab.wait_for(1)
    assert tab.payloads() == ["Hello from the shell"]


def test_publish_reads_stdin(server, clients, uid):
    tab = clients(server.url, {"uid": uid, "ack": True})
    base = {k: v for k, v in os.environ.items() if not k.startswith("RM_")}
    result = subprocess.run([*REDMESSENGER, "publish", f"rm.users.{uid}", "-"], cwd=ROOT,
                            env={**base, "RM_REDIS_PORT": str(server.redis_port)},
                            input="line one\nline two", capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    wait_until(lambda: tab.payloads(), 10, "the message from stdin")
    assert tab.payloads() == ["line one\nline two"]


def test_publish_refuses_a_bad_channel(redis_server):
    result = run([*REDMESSENGER, "publish", "rm.users.a:b", "x"], {"RM_REDIS_PORT": str(redis_server.port)})
    assert result.returncode == 2
    assert our_lines(result)[0].startswith(
        "publish: channel 'rm.users.a:b' is invalid: expected rm.users.UID")


def test_publish_with_no_server_listening_says_it_is_lost(tmp_path):
    lonely = start_redis(tmp_path)  # a Redis no RedMessenger listens to
    try:
        result = run([*REDMESSENGER, "publish", "--pubsub", "rm.users.nobody", "x"],
                     {"RM_REDIS_PORT": str(lonely.port)})
    finally:
        lonely.stop()
    assert result.returncode == 1
    assert our_lines(result) == [f"publish: no subscriber on 127.0.0.1:{lonely.port} heard it: no "
                                 "RedMessenger is running there, and the message is lost"]
