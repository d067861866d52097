"""Recovery from a server killed with `kill -9` (SPEC §5 rule 5; issue "Core server").

Modules that start their own servers (`make_server`) do not use the shared `server`
fixture: a second server on the same Redis would share the work and blur what each test counts.
"""

from __future__ import annotations

import time

from tests.support.processes import wait_until
from tests.test_drain import comes_back_for_the_990, stall_after_10_of_1000


def test_kill_9_mid_drain_then_restart_loses_nothing(make_server, clients, r, uid, summary):
    server = make_server()
    expected, stalling = stall_after_10_of_1000(server, clients, r, uid)

    def in_redis() -> int:
        return r.llen(f"rm:users:{uid}:messages") + sum(
            r.zcard(k) for k in r.scan_iter("rm:inflight:*:*") if k.count(b":") == 3
        )

    # Acks are cleared from Redis in batches, moments after they arrive: kill once the
    # 10 acknowledged are gone (an ack not yet cleared could only come back as a duplicate).
    wait_until(lambda: in_redis() == 990, 10, f"the 10 acks cleared (in Redis: {in_redis()})")
    server.kill()
    assert in_redis() == 990, "unacknowledged messages stay in Redis (queue or in-flight)"
    server.start()
    summary(**comes_back_for_the_990(server, clients, r, uid, expected, stalling, "kill -9 mid-drain"))


def test_ack_client_vanishing_mid_drain_loses_nothing(make_server, clients, proxy_to, r, uid, summary):
    """The tab stalls after 10 of 1,000 and its network vanishes (no FIN): once its pings
    go unanswered, the 990 it had not acknowledged are back at the head, in order."""
    server = make_server(ping_interval=1, ping_timeout=1, log_level="warning")
    proxy = proxy_to(server)
    expected, stalling = stall_after_10_of_1000(server, clients, r, uid, url=proxy.url)
    stalling.vanish(proxy)
    vanished = time.monotonic()
    wait_until(lambda: r.llen(f"rm:users:{uid}:messages") == 990, 15, "990 recommitted")
    noticed = time.monotonic() - vanished
    summary(**comes_back_for_the_990(server, clients, r, uid, expected, stalling, "vanished mid-drain"),
            given_back_after_s=round(noticed, 2))


