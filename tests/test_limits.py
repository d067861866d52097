"""Limits: conn_limit, user_conn_limit, identify_timeout, max_queue_length (SPEC §5, §6)."""

from __future__ import annotations

import json
import time

from tests.support.processes import wait_until


def test_conn_limit_refuses_new_connections_and_keeps_old_ones(make_server, clients, r, uid):
    server = make_server(conn_limit=2)
    held = [clients(server.url, f"{uid}-{i}") for i in range(2)]
    extra = clients(server.url)
    wait_until(lambda: extra.errors, 5, "rm_error on the third connection")
    assert extra.errors == [{"error": "conn_limit"}]
    assert extra.disconnected.wait(5)
    r.publish(f"rm.users.{uid}-0", "still served")
    held[0].wait_for(1)
    held[1].close()
    wait_until(lambda: server.health()[1]["connections"] == 1, 5, "a slot to free up")
    clients(server.url, f"{uid}-again")


def test_user_conn_limit_closes_the_oldest_socket(make_server, clients, r, uid):
    server = make_server(user_conn_limit=2)
    tabs = [clients(server.url, uid) for _ in range(3)]
    assert tabs[0].disconnected.wait(5), "the oldest tab is closed"
    assert not tabs[1].disconnected.is_set() and not tabs[2].disconnected.is_set()
    r.publish(f"rm.users.{uid}", "hi")
    tabs[1].wait_for(1)
    tabs[2].wait_for(1)
    assert (tabs[1].messages[0]["bubble"], tabs[2].messages[0]["bubble"]) == (True, False)
    assert tabs[0].messages == []


def test_unidentified_socket_is_closed_after_identify_timeout(make_server, clients):
    server = make_server(identify_timeout=1)
    idle = clients(server.url)
    assert idle.disconnected.wait(5)
    assert idle.errors == [{"error": "identify_timeout"}]


def test_max_queue_length_drops_the_oldest_and_logs_it(make_server, r, uid):
    server = make_server(max_queue_length=5)
    for i in range(8):
        r.publish(f"rm.users.{uid}", f"m{i}")
    key = f"rm:users:{uid}:messages"
    wait_until(lambda: b"m7" in b"".join(r.lrange(key, 0, -1)), 5, "the last message queued")
    assert [json.loads(m)["payload"] for m in r.lrange(key, 0, -1)] == [f"m{i}" for i in range(3, 8)]
    assert server.log().count("dropping its oldest message") == 3
    metrics = __import__("requests").get(server.url + "/metrics", timeout=5).text
    assert "rm_messages_trimmed_total 3.0" in metrics


def test_bad_config_stops_startup_with_one_line(tmp_path):
    import subprocess
    import sys

    from tests.support.processes import ROOT

    env = {"RM_REDIS_PORT": "not-a-port", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "rm_flask"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "config: redis_port='not-a-port' is invalid: expected an integer from 1 to 65535")


def test_unreachable_redis_is_a_clear_error(tmp_path):
    import subprocess
    import sys

    from tests.support.processes import ROOT, free_port

    env = {"RM_REDIS_PORT": str(free_port()), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "rm_flask"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "Cannot reach Redis at 127.0.0.1:" in done.stderr and "--embedded-redis" in done.stderr


def test_tab_that_never_acknowledges_is_closed_after_ack_timeout(make_server, clients, r, uid):
    server = make_server(ack_timeout=1)
    silent = clients(server.url, {"uid": uid, "ack": True}, auto_ack=False)
    for i in range(5):
        r.publish(f"rm.users.{uid}", f"m{i}")
    silent.wait_for(5)
    assert silent.disconnected.wait(10), "closed for holding messages past ack_timeout"
    key = f"rm:users:{uid}:messages"
    wait_until(lambda: r.llen(key) == 5, 5, "the 5 unacknowledged messages back in the queue")
    assert [json.loads(m)["payload"] for m in r.lrange(key, 0, -1)] == [f"m{i}" for i in range(5)]
    assert "did not acknowledge within" in server.log()


def test_a_drain_goes_in_batches_of_drain_batch_each_waiting_for_acks(make_server, clients, r, uid, summary):
    """README: a backlog arrives in batches of `drain_batch`; in ack mode, after a full
    batch the next one waits for its acks. A tab that acknowledges 15 of a 50-message
    queue, drain_batch 10: it gets the first batch (10, all acknowledged), then the second
    (10, 5 acknowledged), and nothing more; without acks it would get all 50 at once."""
    server = make_server(drain_batch=10, ack_timeout=30, log_level="warning")
    payloads = [f"m{i:02d}" for i in range(50)]
    for who in (uid, f"{uid}-plain"):
        for p in payloads:
            r.publish(f"rm.users.{who}", p)
    key = f"rm:users:{uid}:messages"
    wait_until(lambda: r.llen(key) == r.llen(f"rm:users:{uid}-plain:messages") == 50, 5, "50 queued, twice")
    tab = clients(server.url, {"uid": uid, "ack": True}, ack_limit=15)
    tab.wait_for(20)

    def settled(count: int, quiet: float = 1.0) -> bool:
        """Still `count` received after `quiet` seconds."""
        deadline = time.monotonic() + quiet
        while time.monotonic() < deadline:
            if len(tab.messages) != count:
                return False
            time.sleep(0.05)
        return True

    stalled = settled(20)
    got = tab.payloads()
    left = r.llen(key)
    plain = clients(server.url, {"uid": f"{uid}-plain", "ack": False})  # the same, without acks
    plain.wait_for(50)
    summary(queued=50, drain_batch=10, acknowledged=tab.acked, received=len(got), left_in_queue=left,
            no_ack_received=len(plain.messages))
    print(f"drain_batch 10, 15 acks of 50: received {len(got)}, {left} left in the queue")
    assert stalled, f"received {len(tab.messages)}: a batch went out before the one before was acknowledged"
    assert got == payloads[:20]
    assert left == 30, "the batches not yet sent stay in the queue"
    assert plain.payloads() == payloads
