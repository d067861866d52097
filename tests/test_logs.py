"""`log_format: json`: one JSON object per line, the text lines' fields, keys never logged."""

from __future__ import annotations

import json
import logging
import re
import sys

from rm_flask.logs import JsonFormatter, setup
from tests.support.processes import wait_until


def test_a_json_server_logs_one_object_per_line_and_never_a_key(make_server, clients, r, uid):
    server = make_server(secure_mode=True, log_format="json", admin_token="an-admin-token-0123456789")
    r.set(f"rm:users:{uid}:key", "TOPSECRETKEY")
    clients(server.url).identify(f"{uid}:WRONGKEYVALUE")
    tab = clients(server.url, {"uid": uid, "key": "TOPSECRETKEY", "ack": True})
    r.publish(f"rm.users.{uid}", "Hello, world!")
    tab.wait_for(1)
    wait_until(lambda: "Purging" in server.log() or "New message" in server.log(), 10, "the message logged")

    text = server.log()
    assert "TOPSECRETKEY" not in text and "WRONGKEYVALUE" not in text
    assert "an-admin-token-0123456789" not in text
    entries = [json.loads(line) for line in text.splitlines()]  # every line is one object
    assert entries and all(isinstance(e, dict) and set(e) == {"time", "level", "message"} for e in entries)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["time"]) for e in entries)
    messages = [e["message"] for e in entries]
    # The seed's lines (SPEC §7), word for word, as the message field.
    assert f"Assigning id {uid} to socket " in "\n".join(messages)
    assert f"You're subscribed to rm.users.{uid}!" in messages
    assert "New message from channel rm.users." + uid in messages
    assert {e["level"] for e in entries} <= {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


def test_text_and_json_carry_the_same_fields():
    record = logging.LogRecord("rm_flask", logging.WARNING, __file__, 1, "Client %s said %r", ("a", "b\n"),
                               None)
    text = logging.Formatter("%(asctime)s %(levelname)s %(message)s").format(record)
    entry = json.loads(JsonFormatter().format(record))
    assert text.endswith(f"WARNING {entry['message']}") and entry["level"] == "WARNING"
    assert entry["message"] == "Client a said 'b\\n'"


def test_an_exception_stays_inside_its_object():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("rm_flask", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "failed" and "RuntimeError: boom" in entry["exception"]


def test_setup_switches_the_format_of_the_one_handler():
    logger = logging.getLogger("rm_flask")
    before = list(logger.handlers)
    try:
        setup("info", "json")
        setup("info", "text")
        setup("info", "json")
        ours = [h for h in logger.handlers if getattr(h, "_rm", False)]
        assert len(ours) == 1 and isinstance(ours[0].formatter, JsonFormatter)
    finally:
        for handler in logger.handlers:
            if handler not in before:
                logger.removeHandler(handler)
        setup("info", "text")
