"""The envelope (SPEC §3)."""

from __future__ import annotations

import base64
import time

from rm_flask import envelope


def test_utf8_payload_is_unchanged():
    env = envelope.make("rm.users.u", "Hello, 世界 100%".encode())
    assert env["payload"] == "Hello, 世界 100%" and "encoding" not in env
    assert env["source"] == "rm.users.u"
    assert abs(env["timestamp"] - time.time() * 1000) < 5000


def test_non_utf8_is_base64():
    env = envelope.make("rm.users.u", b"\xff\x00")
    assert env["encoding"] == "base64" and base64.b64decode(env["payload"]) == b"\xff\x00"


def test_ids_are_unique_and_survive_the_queue():
    ids = {envelope.make("s", b"x")["id"] for _ in range(1000)}
    assert len(ids) == 1000
    env = envelope.make("s", b"x")
    stored = envelope.dumps({**env, "bubble": True})
    assert "bubble" not in envelope.loads(stored)
    assert envelope.loads(stored) == env


def test_preview_is_cut_to_80_characters_on_one_line():
    env = envelope.make("s", ("a\n" * 100).encode())
    text = envelope.preview(env)
    assert len(text) == 80 and "\n" not in text and text.endswith("...")
    assert envelope.preview(envelope.make("s", b"\xff")) == "<binary, base64>"
