"""The production entry points: gunicorn with gevent-websocket, and wsgi:app."""

from __future__ import annotations

from tests.support.processes import ServerProcess, wait_until


def test_gunicorn_serves_and_delivers(redis_server, logs_dir, clients, r, uid):
    proc = ServerProcess(redis_server.port, logs_dir, gunicorn=True, log_level="warning").start()
    try:
        r.publish(f"rm.users.{uid}", "queued first")
        tab = clients(proc.url, {"uid": uid, "ack": True})
        r.publish(f"rm.users.{uid}", "then live")
        tab.wait_for(2)
        assert tab.payloads() == ["queued first", "then live"]
        status, health = proc.health()
        assert status == 200 and health["subscribed"] is True
        tab.close()  # gunicorn waits for open sockets when it stops
    finally:
        proc.stop()


def test_servers_on_one_redis_count_each_other_and_forget_a_stopped_one(redis_server, logs_dir, r):
    first = ServerProcess(redis_server.port, logs_dir, log_level="warning").start()
    second = ServerProcess(redis_server.port, logs_dir, log_level="warning").start()
    try:
        wait_until(lambda: first.health()[1]["servers"] == 2, 10, "the first to see the second")
        assert second.health()[1]["servers"] == 2
        second.stop()
        wait_until(lambda: first.health()[1]["servers"] == 1, 10, "the first to see the second go")
        assert "is gone" in first.log()
    finally:
        second.stop()
        first.stop()
