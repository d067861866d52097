"""The publisher: redis-py PUBLISH (or XADD to the inbox) in pipelines, at full speed behind a
delivery window or paced.

Payloads are ``"<seq>:<time_ns>"`` (plus optional padding) where ``seq`` counts per channel,
so a client can compute publish-to-receive latency and spot lost, duplicated and reordered
messages per (user, channel) stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from rm_flask import names


@dataclass
class PublishResult:
    sent: int = 0
    first_ns: int = 0
    last_ns: int = 0
    unheard: int = 0  # PUBLISH answered 0 receivers: nobody subscribed, message never seen
    stalled: bool = False  # the window stopped moving (deliveries lost), publishing gave up
    truncated: bool = False  # hit the time cap before publishing everything
    per_channel: dict[str, int] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return max(self.last_ns - self.first_ns, 1) / 1e9


def payload(seq: int, pad: str) -> str:
    return f"{seq}:{time.time_ns()}{pad}"


class Publisher:
    def __init__(self, port: int, delivered: Callable[[], int] | None = None) -> None:
        self.redis = redis.Redis(host="127.0.0.1", port=port)
        self.delivered = delivered

    def run(
        self,
        channels: list[str],
        total: int,
        *,
        fan: int = 1,
        rate: float | None = None,
        window: int | None = None,
        batch: int = 200,
        pad_bytes: int = 0,
        stall_s: float = 5.0,
        max_s: float = 45.0,
        via: str = "publish",
    ) -> PublishResult:
        """Publish ``total`` messages round-robin over ``channels``.

        ``rate``: messages per second (paced); otherwise as fast as possible, but with
        ``window`` set, never more than ``window`` deliveries (``fan`` per message) ahead of
        what the clients have received, so the figure is what the server sustains rather
        than how deep Redis can buffer. Gives up after ``max_s`` seconds (``truncated``).
        ``via="inbox"``: each message is an entry added to the inbox (SPEC §9) instead.
        """
        res = PublishResult(per_channel=dict.fromkeys(channels, 0))
        pad = (":" + "x" * pad_bytes) if pad_bytes else ""
        nch = len(channels)
        pipe = self.redis.pipeline(transaction=False)
        start = time.monotonic()
        last_progress = (start, -1)
        while res.sent < total:
            if time.monotonic() - start > max_s:  # a very slow server must not hang the run
                res.truncated = True
                break
            n = min(batch, total - res.sent)
            if rate is not None:
                due = int(rate * (time.monotonic() - start)) + 1 - res.sent
                if due <= 0:
                    time.sleep(min(0.001, -due / rate + 1 / rate))
                    continue
                n = min(n, due)
            elif window is not None and self.delivered is not None:
                got = self.delivered()
                room = window - (res.sent * fan - got)
                if room < fan:
                    now = time.monotonic()
                    if got != last_progress[1]:
                        last_progress = (now, got)
                    elif now - last_progress[0] > stall_s:
                        res.stalled = True
                        break
                    time.sleep(0.0002)
                    continue
                n = min(n, max(room // fan, 1))
            for i in range(res.sent, res.sent + n):
                if via == "inbox":
                    pipe.xadd(names.INBOX_KEY, {"channel": channels[i % nch], "data": payload(i // nch, pad)})
                else:
                    pipe.publish(channels[i % nch], payload(i // nch, pad))
            if not res.first_ns:
                res.first_ns = time.time_ns()
            res.unheard += sum(1 for r in pipe.execute() if r == 0)  # (an XADD answers an id)
            res.sent += n
        res.last_ns = time.time_ns()
        for ch_idx, ch in enumerate(channels):
            res.per_channel[ch] = len(range(ch_idx, res.sent, nch))
        return res

    def close(self) -> None:
        self.redis.close()
