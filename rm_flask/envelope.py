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


def dumps(envelope: Envelope) -> str:
    """Encode for the queue; `bubble` is left out, as it depends on the receiving socket.

    Written out by hand, as this runs for every message: the fields are fixed, and
    `encode_basestring` (json's C string quoting) does the escaping.
    """
    text = (
        f'{{"id":{_quote(envelope["id"])},"source":{_quote(envelope["source"])},'
        f'"timestamp":{int(envelope["timestamp"])},"payload":{_quote(envelope["payload"])}'
    )
    if "encoding" in envelope:
        text += f',"encoding":{_quote(envelope["encoding"])}'
    return text + "}"


def loads(raw: bytes | str) -> Envelope:
    return json.loads(raw)


def with_bubble(envelope: Envelope, bubble: bool) -> Envelope:
    return {**envelope, "bubble": bubble}


def preview(envelope: Envelope, limit: int = 80) -> str:
    """The payload as logs show it: cut to `limit` characters, one line."""
    text = envelope.get("payload", "")
    if envelope.get("encoding") == "base64":
        text = "<binary, base64>"
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    def from_stored(cls, stored: str) -> Message:
        return cls(loads(stored), stored)

    @property
    def id(self) -> str:
        return self.envelope["id"]

    def frame(self, bubble: bool) -> str:
        """The Socket.IO event arguments: `["message",{...,"bubble":…}]`."""
        if self._frames is None:
            head = '["message",' + self.stored[:-1]
            self._frames = (head + ',"bubble":false}]', head + ',"bubble":true}]')
        return self._frames[bubble]
