"""The message envelope of SPEC §3, and its encoding for the queue."""

from __future__ import annotations

import base64
import itertools
import json
import os
import time
from json.encoder import encode_basestring as _quote
from typing import Any

Envelope = dict[str, Any]

# A prefix random per process and a counter make ids unique across processes and
# restarts without a Redis round trip per message.
_PREFIX = os.urandom(6).hex()
_counter = itertools.count(1)


def new_id() -> str:
    return f"{_PREFIX}-{next(_counter):x}"


def make(source: str, data: bytes | str, timestamp_ms: int | None = None,
         msg_id: str | None = None) -> Envelope:
    """Wrap published data; data that is not UTF-8 is carried as base64, never dropped."""
    envelope: Envelope = {
        "id": new_id() if msg_id is None else msg_id,
        "source": source,
        "timestamp": int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
    }
    if isinstance(data, bytes):
        try:
            envelope["payload"] = data.decode("utf-8")
        except UnicodeDecodeError:
            envelope["payload"] = base64.b64encode(data).decode("ascii")
            envelope["encoding"] = "base64"
    else:
        envelope["payload"] = data
    return envelope


_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def dumps(envelope: Envelope) -> str:
    """Encode for the queue; `bubble` is left out, as it depends on the receiving socket.

    Written out by hand, as this runs for every message: the fields are fixed, and
    `encode_basestring` (json's C string quoting) does the escaping. A payload that is
    not text only comes from a queue entry another program wrote (see `from_queue`).
    """
    payload = envelope["payload"]
    payload = _quote(payload) if isinstance(payload, str) else _compact(payload)
    text = (
        f'{{"id":{_quote(envelope["id"])},"source":{_quote(envelope["source"])},'
        f'"timestamp":{int(envelope["timestamp"])},"payload":{payload}'
    )
    if "encoding" in envelope:
        text += f',"encoding":{_quote(envelope["encoding"])}'
    return text + "}"


def loads(raw: bytes | str) -> Envelope:
    return json.loads(raw)


def preview(envelope: Envelope, limit: int = 80) -> str:
    """The payload as logs show it: cut to `limit` characters, one line."""
    text = envelope.get("payload", "")
    if envelope.get("encoding") == "base64":
        text = "<binary, base64>"
    elif not isinstance(text, str):
        text = json.dumps(text, ensure_ascii=False)
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def preview_stored(raw: bytes | str, limit: int = 80) -> str:
    """`preview` of a queue entry, whatever wrote it."""
    try:
        envelope = loads(raw)
        if isinstance(envelope, dict) and "payload" in envelope:
            return preview(envelope, limit)
    except ValueError:
        pass
    text = raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else raw
    return preview({"payload": text}, limit)


# Ids given to queue entries another program wrote. No dots, so that store.py's Lua,
# which reads a position in the sequence out of our own ids, finds none in them.
def _foreign_id() -> str:
    return f"q-{os.urandom(8).hex()}"


def _ours(raw: bytes) -> Envelope | None:
    """The envelope, if `raw` is one exactly as `dumps` writes it (the frames are cut
    out of that exact text)."""
    if not raw.startswith(b'{"id":"'):
        return None
    try:
        env = json.loads(raw)
        return env if dumps(env).encode("utf-8") == raw else None
    except (ValueError, KeyError, TypeError):
        return None


def adopt(raw: bytes, uid_channel: str, now_ms: int | None = None) -> Envelope:
    """The envelope to deliver for a queue entry RedMessenger did not write (SPEC §3).

    An object with a `payload` (the original Node.js server's entries) keeps its
    `source`, `timestamp` and `payload`, and its `id` if it has one; anything else is the
    payload of a new envelope from the user's own channel.
    """
    now = int(time.time() * 1000) if now_ms is None else now_ms
    try:
        obj = json.loads(raw)
    except ValueError:  # not JSON, or not UTF-8
        obj = None
    if isinstance(obj, dict) and "payload" in obj:
        env: Envelope = {
            "id": obj["id"] if isinstance(obj.get("id"), str) and obj["id"] else _foreign_id(),
            "source": obj["source"] if isinstance(obj.get("source"), str) else uid_channel,
            "timestamp": (obj["timestamp"] if isinstance(obj.get("timestamp"), int)
                          and not isinstance(obj.get("timestamp"), bool) else now),
            "payload": obj["payload"],
        }
        if obj.get("encoding") == "base64":
            env["encoding"] = "base64"
        return env
    return make(uid_channel, raw, now, _foreign_id())


class Message:
    """One envelope on its way: as stored in Redis, and as written to sockets.

    The JSON kept in the queue is made once per message; the two frames a socket can get
    (bubble true or false) are that JSON with one more field, made once and shared by
    every socket and every member of a group.
    """

    __slots__ = ("envelope", "stored", "_frames")

    def __init__(self, env: Envelope, stored: str | None = None) -> None:
        self.envelope = env
        self.stored = dumps(env) if stored is None else stored
        self._frames: tuple[str, str] | None = None

    @classmethod
    def from_queue(cls, raw: bytes, uid_channel: str) -> tuple[Message, bool]:
        """A queue entry as a message; True with it if another program wrote the entry,
        which then travels in the form `adopt` gives it."""
        env = _ours(raw)
        if env is not None:
            return cls(env, raw.decode("utf-8")), False
        return cls(adopt(raw, uid_channel)), True

    @property
    def id(self) -> str:
        return self.envelope["id"]

    def frame(self, bubble: bool) -> str:
        """The Socket.IO event arguments: `["message",{...,"bubble":…}]`."""
        if self._frames is None:
            head = '["message",' + self.stored[:-1]
            self._frames = (head + ',"bubble":false}]', head + ',"bubble":true}]')
        return self._frames[bubble]
