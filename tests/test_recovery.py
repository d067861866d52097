"""Recovery from a server killed with `kill -9` (SPEC §5 rule 5; issue "Core server").

Modules that start their own servers (`make_server`) do not use the shared `server`
fixture: a second server on the same Redis would share the work and blur what each test counts.
"""

from __future__ import annotations

import time

from tests.support.accounting import in_flight_count
from tests.support.processes import wait_until
from tests.test_drain import comes_back_for_the_990, stall_after_10_of_1000


def undelivered(r, uid: str) -> int:
    """`uid`'s messages in Redis not yet delivered: queued, or in flight on any server."""
    return r.llen(f"rm:users:{uid}:messages") + in_flight_count(r, uid)


def wait_for_the_10_acks(r, uid: str) -> None:
    """Until the stalled tab's 10 acks have reached the server and left Redis."""
    wait_until(lambda: undelivered(r, uid) == 990, 10,
               lambda: f"the 10 acks cleared (in Redis: {undelivered(r, uid)})")


def test_kill_9_mid_drain_then_restart_loses_nothing(make_server, clients, r, uid, summary):
    server = make_server()
    expected, stalling = stall_after_10_of_1000(server, clients, r, uid)

    # Acks are cleared from Redis in batches, moments after they arrive: kill once the
    # 10 acknowledged are gone (an ack not yet cleared could only come back as a duplicate).
    wait_for_the_10_acks(r, uid)
    server.kill()
    assert undelivered(r, uid) == 990, "unacknowledged messages stay in Redis (queue or in-flight)"
    server.start()
    summary(**comes_back_for_the_990(server, clients, r, uid, expected, stalling, "kill -9 mid-drain"))


def test_ack_client_vanishing_mid_drain_loses_nothing(make_server, clients, proxy_to, r, uid, summary):
    """The tab stalls after 10 of 1,000 and its network vanishes (no FIN): once its pings
    go unanswered, the 990 it had not acknowledged are back at the head, in order."""
    server = make_server(ping_interval=1, ping_timeout=1, log_level="warning")
    proxy = proxy_to(server)
    expected, stalling = stall_after_10_of_1000(server, clients, r, uid, url=proxy.url)
    # An ack still on its way when the network goes would be lost with it, and that
    # message rightly given back too: vanish once the server has all 10.
    wait_for_the_10_acks(r, uid)
    stalling.vanish(proxy)
    vanished = time.monotonic()
    wait_until(lambda: r.llen(f"rm:users:{uid}:messages") == 990, 15,
               lambda: f"990 recommitted (queued: {r.llen(f'rm:users:{uid}:messages')})")
    noticed = time.monotonic() - vanished
    summary(**comes_back_for_the_990(server, clients, r, uid, expected, stalling, "vanished mid-drain"),
            given_back_after_s=round(noticed, 2))


