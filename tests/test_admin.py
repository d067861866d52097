"""/admin over HTTP: off without a token, 401 without the right credentials, and numbers
that match what the test did. (The page itself, in Chromium: tests/browser/test_admin_page.py.)"""

from __future__ import annotations

import base64

import pytest
import requests

from tests.support.processes import wait_until

TOKEN = "s3cret-admin-token-for-tests"
AUTH = ("admin", TOKEN)


@pytest.fixture(scope="module")
def admin_server(redis_server, logs_dir):
    from tests.support.processes import ServerProcess

    proc = ServerProcess(redis_server.port, logs_dir, admin_token=TOKEN).start()
    yield proc
    proc.stop()


def test_off_without_a_token(make_server):
    server = make_server()  # stopped after this test: the numbers below are one server's
    for path in ("/admin", "/admin/stats.json"):
        reply = requests.get(server.url + path, auth=AUTH, timeout=5)
        assert reply.status_code == 404 and reply.json()["error"] == "not_found"


@pytest.mark.parametrize("auth", [
    None,
    ("admin", "wrong-password-of-some-length"),
    ("root", TOKEN),
    ("admin", TOKEN[:-1]),
    ("admin", TOKEN + "x"),
    ("admin", "ünïcode-pässword-ünïcode"),
    ("", ""),
], ids=["none", "wrong password", "wrong user", "prefix", "longer", "non-ascii", "empty"])
def test_refused_without_the_right_credentials(admin_server, auth):
    for path in ("/admin", "/admin/stats.json"):
        reply = requests.get(admin_server.url + path, auth=auth, timeout=5)
        assert reply.status_code == 401, (path, auth)
        assert reply.headers["WWW-Authenticate"] == 'Basic realm="RedMessenger admin", charset="UTF-8"'
        assert TOKEN not in reply.text


def test_other_schemes_and_garbage_are_refused(admin_server):
    for header in (f"Bearer {TOKEN}", "Basic !!!notbase64", "Basic " + base64.b64encode(b"admin").decode(),
                   "Basic " + base64.b64encode(f"admin:{TOKEN}".encode())[:-2].decode()):
        reply = requests.get(admin_server.url + "/admin", headers={"Authorization": header}, timeout=5)
        assert reply.status_code == 401, header
    assert TOKEN not in admin_server.log()


def test_the_page_and_its_files_are_served_with_the_token(admin_server):
    page = requests.get(admin_server.url + "/admin", auth=AUTH, timeout=5)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert page.headers["Cache-Control"] == "no-store"
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    for src in ("/vendor/uPlot.iife.min.js", "/vendor/uPlot.min.css", "/static/admin.js"):
        assert src in page.text
        assert requests.get(admin_server.url + src, timeout=5).status_code == 200, src
    assert "cdn" not in page.text.lower() and "https://" not in page.text


def stats(server):
    reply = requests.get(server.url + "/admin/stats.json", auth=AUTH, timeout=5)
    assert reply.status_code == 200
    return reply.json()


def test_numbers_match_what_the_test_did(admin_server, clients, r, uid):
    # Alone on its Redis, this server queues every message for an offline user itself (with
    # others, each queues those it owns).
    wait_until(lambda: admin_server.health()[1]["servers"] == 1, 15, "the other servers to be gone")
    before = stats(admin_server)
    n_sockets, m_live, k_queued = 4, 25, 7
    tabs = [clients(admin_server.url, {"uid": f"{uid}-{i}", "ack": True}) for i in range(n_sockets)]
    for i in range(m_live):
        r.publish(f"rm.users.{uid}-{i % n_sockets}", f"live {i}")
    for i in range(k_queued):
        r.publish(f"rm.users.{uid}-away", f"queued {i}")
    wait_until(lambda: sum(len(t.messages) for t in tabs) >= m_live
               and r.llen(f"rm:users:{uid}-away:messages") == k_queued, 10, "messages delivered and queued")
    assert sum(len(t.messages) for t in tabs) == m_live

    # The counters move when the acks arrive; wait for them, then compare with the clients.
    now = wait_until(lambda: (s := stats(admin_server))["totals"]["delivered"] - before["totals"]["delivered"]
                     == m_live and s, 10, "the delivered counter to catch up")
    delta = {k: now["totals"][k] - before["totals"][k] for k in now["totals"]}
    assert delta["received"] == m_live + k_queued
    assert delta["delivered"] == m_live
    # A message for a user whose drain (started by the identify, even of an empty queue)
    # is still going is queued behind it and drained: counted in both.
    assert delta["queued"] - delta["drained"] == k_queued
    assert delta["identified"] == n_sockets
    assert now["sockets_open"] == before["sockets_open"] + n_sockets
    assert now["subscribed"] is True and now["redis_ping_ms"] is not None and now["redis_ping_ms"] < 1000
    assert now["round_trip_age_ms"] is not None and now["round_trip_age_ms"] < 5000

    # The servers table, with this server's sockets; the deepest queue is the away user's.
    ours = wait_until(lambda: [s for s in stats(admin_server)["servers"] if s["me"]
                               and s["sockets"] == n_sockets], 10, "our row in the servers table")
    assert ours[0]["about"] and ours[0]["heartbeat_ttl"] > 0
    deepest = wait_until(lambda: stats(admin_server)["queues"]["deepest"], 10, "the queue scan")
    assert deepest[0] == {"uid": f"{uid}-away", "length": k_queued}

    # A refused identify shows by reason.
    assert clients(admin_server.url).identify("not a uid") == {"ok": False, "error": "invalid_identifier"}
    failed = wait_until(lambda: stats(admin_server)["identify_failures"].get("invalid_identifier", 0)
                        > before["identify_failures"].get("invalid_identifier", 0), 10, "the refusal counted")
    assert failed


def test_metrics_carry_the_alerting_gauges(admin_server, r, uid):
    for i in range(3):
        r.rpush(f"rm:users:{uid}:messages", f"x{i}")

    def gauges():
        text = requests.get(admin_server.url + "/metrics", timeout=5).text
        return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
                if line.startswith(("rm_redis_subscribed ", "rm_redis_up ", "rm_queue_length_max ",
                                    "rm_pubsub_round_trip_age_seconds ", "rm_queues "))}

    found = wait_until(lambda: (g := gauges()).get("rm_queue_length_max", 0) >= 3 and g, 15, "the queue scan")
    assert found["rm_redis_subscribed"] == 1 and found["rm_redis_up"] == 1
    assert 0 <= found["rm_pubsub_round_trip_age_seconds"] < 5
    assert found["rm_queues"] >= 1
