"""The running server: Redis clients, registry, dispatcher and listener, wired together."""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import time
from functools import partial
from typing import Any

import gevent
import redis
from flask_socketio import SocketIO
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import names
from .cluster import Cluster
from .config import Config
from .dispatcher import Dispatcher, Hooks
from .inbox import Inbox
from .listener import Listener
from .metrics import Metrics
from .registry import Registry
from .retry import retrying
from .sequence import position_text
from .sessions import ADMIT_AT_ONCE
from .store import Store
from .transport import SocketTransport

log = logging.getLogger("rm_flask")

HOUSEKEEPING_EVERY = 1.0  # seconds between heartbeats, round trips and timeout sweeps
HEARTBEAT_TTL = 15  # a server silent this long is dead even if its connection lingers
REDIS_POOL_SIZE = 32
# seconds after Redis starts before a server without a connection is dead: more than the
# listener's longest backoff and a connect timeout
RECONNECT_GRACE = 6
# An inbox entry unrouted this long makes /healthz red: no server reads the inbox, or the
# one that does cannot keep up.
INBOX_LATE_AFTER = 60.0
STUCK_AFTER = 6.0  # a subscription that received nothing (pings included) this long is replaced


class RedisUnreachable(RuntimeError):
    """Redis did not answer at start-up."""


class Service:
    """Everything one RedMessenger process runs."""

    def __init__(self, config: Config, socketio: SocketIO) -> None:
        self.config = config
        self.socketio = socketio
        self.server_id = os.urandom(6).hex()
        # Many greenlets share the pool; past its size they wait their turn (for as long
        # as it takes: every command times out by itself, so a connection always comes
        # back) instead of failing with "Too many connections" or "No connection
        # available", which would look like Redis being down.
        self.redis = self._client(REDIS_POOL_SIZE, health_check_interval=15)
        # Identifies and housekeeping on connections of their own: a storm of sockets
        # leaving must not hold up the ones that come back, and nothing may make this
        # server's heartbeats late or Redis look down to it.
        self.admit_redis = self._client(ADMIT_AT_ONCE)
        self.housekeeping_redis = self._client(2)
        # The subscription waits for messages indefinitely, so it gets no read timeout;
        # the round trips through the control channel notice when it stops delivering.
        # No retries inside redis-py either: its retry reconnects and resubscribes on its
        # own, and messages that reach that new connection before the error surfaces here
        # were lost when the listener then dropped it. The listener reconnects instead.
        # With no errors it retries on, redis-py does not even reconnect once before it
        # gives up (with 0 retries it still did: its failure handler reconnects first).
        self.pubsub_redis = redis.Redis.from_url(
            **config.redis_kwargs(),
            client_name=names.client_name(self.server_id),
            socket_connect_timeout=2,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0, supported_errors=()),
        )
        self.metrics = Metrics()
        self.registry = Registry(config.conn_limit, config.user_conn_limit)
        self.store = Store(self.redis, self.server_id, config.queue_expiry, config.max_queue_length)
        self.transport = SocketTransport(socketio, config.rm_route, config.max_buffered)
        self.cluster = Cluster(self.redis, self.server_id, admit_client=self.admit_redis)
        self.housekeeping_cluster = Cluster(self.housekeeping_redis, self.server_id)
        self.dispatcher = Dispatcher(
            self.store, self.registry, self.transport, self.metrics,
            spawn=socketio.start_background_task, cluster=self.cluster,
            drain_batch=config.drain_batch, ack_timeout=config.ack_timeout,
            max_payload=config.max_payload,
            hooks=Hooks(
                # The listener is made below, and needs the dispatcher: looked up when called.
                synced=lambda: self.listener.listen_to_messages(),
                pong=lambda: self.listener.pong(),
                # The survivor that declared us dead redid our work: we rejoin with no gap to redo.
                declared_dead=lambda: self._join(gap=False),
                new_era=partial(self._announce, rejoin=False),
                suspect=lambda: self._reap_soon(),
                inbox_routed=lambda server, entry_ids, servers: self.inbox.routed(server, entry_ids, servers),
            ),
        )
        self.inbox = Inbox(self.redis, self.server_id, self.metrics, config.inbox_key_ttl, config.max_payload)
        self.listener = Listener(
            self.pubsub_redis, self.dispatcher.route_batch, on_subscribed=self._join,
            on_reconnect=self.metrics.redis_reconnects.inc, on_listening=self._ready,
        )
        # Set when the view is loaded after a (re)join: identifies held meanwhile go on.
        self._synced = threading.Event()
        self._last_reap = 0.0
        self._about = f"{socket.gethostname()} {os.getpid()}"  # what a heartbeat says
        # Whether Redis answered the last heartbeat (each second). The listener may still
        # count as subscribed while Redis is gone: it retries the writes of messages it
        # already holds before it reads on and finds the connection closed.
        self.redis_ok = True
        self._started = False
        self._redis_run: str | None = None  # Redis's run id at our last join
        self._start_lock = threading.Lock()
        self._stopped = threading.Event()

    def _client(self, connections: int, **options: Any) -> redis.Redis:
        pool = redis.BlockingConnectionPool.from_url(
            self.config.redis_kwargs()["url"],
            max_connections=connections,
            timeout=None,
            client_name=names.client_name(self.server_id),
            socket_connect_timeout=2,
            socket_timeout=5,
            socket_keepalive=True,
            **options,
        )
        return redis.Redis(connection_pool=pool)

    def check_redis(self) -> None:
        """Fail fast, with one clear line, when Redis is not there at start-up."""
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            where = self.config.redis_url or f"{self.config.redis_host}:{self.config.redis_port}"
            raise RedisUnreachable(
                f"Cannot reach Redis at {where} ({exc}). Start Redis, point redis_host/"
                "redis_port or redis_url at it, or run `python -m rm_flask --embedded-redis`."
            ) from None

    def start(self) -> None:
        """Register this server, reclaim what dead servers held, and start listening."""
        with self._start_lock:
            if self._started:
                return
            self._started = True
        self.check_redis()
        # The listener's writes get a connection of their own (it connects now, so only
        # once Redis is known to be there).
        self.store.listener_client = redis.Redis.from_url(
            **self.config.redis_kwargs(),
            client_name=names.client_name(self.server_id),
            socket_connect_timeout=2,
            socket_timeout=5,
            socket_keepalive=True,
            single_connection_client=True,
        )
        self._heartbeat()
        # Before any socket can identify: the in-flight messages of servers that died
        # while none was running go back to the queues first, where drains find them.
        self.reap_dead_servers(now=True)
        # Everything made so far lives as long as the process: keep the collector from
        # walking it again and again. Its full passes over a heap of thousands of
        # sockets showed as pauses of tens of ms in the benchmark's latency tail.
        gc.freeze()
        gc.set_threshold(10_000, 50, 100)
        # gevent records where each greenlet was spawned, for debuggers; every socket
        # has several that live as long as it, and that record was 4.5 KB of each idle
        # socket's 63 at 5,000 sockets. Nothing here reads it.
        gevent.config.track_greenlet_tree = False
        self.socketio.start_background_task(self.listener.run)
        self.socketio.start_background_task(self._housekeeping)
        self.socketio.start_background_task(self.dispatcher.settler.run, self._stopped)
        self.socketio.start_background_task(self.inbox.run, self._stopped, self.accepting)
        log.info("RedMessenger %s listening to %s on Redis", self.server_id, names.PATTERN)

    def stop(self) -> None:
        """Stop listening without losing what was read: the subscription ends first, then
        what only memory holds goes to Redis. Sockets are left to close with the process."""
        self._stopped.set()
        self.dispatcher.settler.wake()
        self.listener.stop()
        if self._started:
            self.dispatcher.sessions.keep_in_redis()
            try:
                self.housekeeping_redis.set(names.stopped_key(self.server_id), 1, ex=3600)
            except redis.RedisError:
                pass  # found gone by its connections, or its silence, instead

    ### Liveness ###

    def _join(self, gap: bool = True) -> None:
        """Subscribed (again): announce this server and learn the cluster as of then."""
        self._synced.clear()
        # The listener's write connection most likely broke with the subscription: the
        # first write after the rejoin must not wait out a failed try.
        connection = getattr(self.store.listener_client, "connection", None)
        if connection is not None:
            connection.disconnect()
        view = self.dispatcher.view
        # Nobody may have heard what the inbox forwarded just before: we were alone (by
        # the view we had while subscribed), or Redis restarted and cut every
        # subscription. Starting, we knew neither: what an earlier reader left is the
        # takeover's to forward again.
        restarted = self._redis_restarted()
        self.inbox.resubscribed(alone=view.synced and (len(view.servers) < 2 or restarted))
        read, era = (self.dispatcher.last_read(), view.era) if view.synced and gap else ((0, 0), "")
        self.dispatcher.joining(self._announce(), read, era)

    def _redis_restarted(self) -> bool:
        """Is this another Redis run than at our last join? (Unknown: no.)"""
        try:
            run_id = self.redis.info("server").get("run_id")
        except redis.RedisError:
            return False
        restarted = self._redis_run is not None and run_id != self._redis_run
        self._redis_run = run_id
        return restarted

    def _announce(self, rejoin: bool = True) -> list[Any]:
        """Run our `up`: this server, its heartbeat and its sockets; returns the cluster
        as of that event. `rejoin`: we were not subscribed (see `Cluster.up`)."""
        return retrying("announcing this server", lambda: self.cluster.up(
            self.dispatcher.own_sockets(), self._about, HEARTBEAT_TTL, rejoin))

    def _ready(self) -> None:
        """Subscribed to the apps' channels with our view loaded: say from where the
        others must redo what was ours (see `View.rejoined`)."""
        retrying("announcing this server ready", lambda: self.cluster.mark(
            "ready", self.dispatcher.view.ready_users(self.server_id), drain="start",
            ref=position_text(self.dispatcher.window_from)))
        self._synced.set()

    def _heartbeat(self) -> None:
        self.housekeeping_redis.set(names.server_key(self.server_id), self._about, ex=HEARTBEAT_TTL)

    def _reap_soon(self) -> None:
        """Look for dead servers now, unless someone just did (at most 5 times a second)."""
        if time.monotonic() - self._last_reap >= 0.2:
            self.reap_dead_servers()

    def reap_dead_servers(self, now: bool = False) -> None:
        """Declare dead the servers that died; the first survivor to do so redoes their work.

        Evidence that survives Redis losing its data, not keys it may have lost: a server
        is dead when Redis holds no connection of its (a process that is killed loses its
        connections at once, so its users, who reconnect elsewhere within a second or
        two, are served again within about as long), or when it has published nothing
        (not even its pings, each second) for `HEARTBEAT_TTL` seconds while ours came
        back on time. The servers are those in `rm:servers` and those in our view, which
        after a FLUSHALL may be in no set at all until they announce themselves again.
        A server that stopped on purpose leaves a mark when it reads nothing more: that
        key is evidence too (its absence proves nothing).
        """
        self._last_reap = time.monotonic()
        try:
            members = {m.decode() for m in self.redis.smembers(names.SERVERS_KEY)}
            others = (members | set(self.dispatcher.view.servers)) - {self.server_id}
            if not others:
                return
            try:
                connected = {c.get("name", "") for c in self.redis.client_list()}
            except redis.ResponseError:  # CLIENT LIST may be disabled on managed Redis
                connected = None
            if connected is not None and not connected >= {names.client_name(o) for o in others}:
                # A Redis that has just started has none of anyone's connections yet: only
                # once every server has had time to reconnect is a missing one evidence.
                if int(self.redis.info("server").get("uptime_in_seconds", 0)) < RECONNECT_GRACE:
                    connected = None
            for other in sorted(others):
                if self.redis.exists(names.stopped_key(other)):
                    log.info("Server %s stopped", other)
                elif connected is not None and names.client_name(other) not in connected:
                    log.info("Server %s has no connection to Redis", other)
                elif self._silent(other):
                    log.info("Server %s has published nothing for %ds", other, HEARTBEAT_TTL)
                else:
                    continue
                seq = self.cluster.down(other)
                if seq and now:
                    self.dispatcher.recovery.recover(other, seq)  # not listening yet: nothing read to add
                elif seq:
                    self.dispatcher.recovery.won(other, seq)
        except redis.RedisError as exc:
            log.warning("Could not check for dead servers: %s", exc)

    def _silent(self, other: str) -> bool:
        now = time.monotonic()
        if not self.listener.last_pong or now - self.listener.last_pong > 3:
            return False  # we read late ourselves: silence would prove nothing
        heard = self.dispatcher.heard.get(other, self.dispatcher.synced_at)
        return now - heard > HEARTBEAT_TTL

    def _housekeeping(self) -> None:
        while not self._stopped.wait(HOUSEKEEPING_EVERY):
            try:
                self._expire_unidentified()
                self.dispatcher.sessions.expire_unacknowledged()
                self.dispatcher.replays_overdue()
                self._heartbeat()
                # Says how far our listener has read: a drain waiting on us can go on.
                self.housekeeping_cluster.mark("ping", ref=self.dispatcher.view.seq)
                self.redis_ok = True
                self.dispatcher.alive_at = time.monotonic()
                if (
                    self.listener.subscribed
                    and time.monotonic() - self.listener.last_received > STUCK_AFTER
                    and not self.listener.busy()
                ):
                    self.listener.kick()
                self.reap_dead_servers()
                self.inbox.look()
            except redis.RedisError as exc:
                self.redis_ok = False
                log.debug("housekeeping: Redis unavailable: %s", exc)
            except Exception:
                log.exception("housekeeping failed")

    def _expire_unidentified(self) -> None:
        deadline = time.monotonic() - self.config.identify_timeout
        for conn in self.registry.unidentified_before(deadline):
            log.info("Socket %s did not identify within %ss; closing it",
                     conn.address, self.config.identify_timeout)
            self.metrics.identify_failed.labels("identify_timeout").inc()
            self.transport.refuse(conn.sid, "identify_timeout")
            conn.requested = ""  # refused once, not every second until it is gone

    def accepting(self) -> bool:
        """Can a socket that identifies now be served?"""
        return self.listener.subscribed and self.redis_ok and self.dispatcher.view.synced

    def wait_accepting(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for `accepting()`: a server that is starting or
        rejoining Redis holds identifies for moments rather than refusing them. One
        that cannot reach Redis at all says so at once."""
        deadline = time.monotonic() + timeout
        while not self.accepting():
            left = deadline - time.monotonic()
            if left <= 0 or not self.redis_ok:
                return False
            if self._synced.is_set():
                time.sleep(min(left, 0.1))  # synced, but Redis or the subscription is not back
            else:
                self._synced.wait(min(left, 0.5))
        return True

    ### Health ###

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Is Redis answering, and is the subscription proven live by a round trip?"""
        status: dict[str, Any] = {
            "server": self.server_id,
            "connections": self.registry.count(),
            "servers": len(self.dispatcher.view.servers),
            "view": self.dispatcher.view.digest(),
            "seq": self.dispatcher.view.seq,
        }
        try:
            self.redis.ping()
            status["redis"] = "ok"
        except redis.RedisError as exc:
            status["redis"] = f"unreachable: {exc}"
        now = time.monotonic()
        listener = self.listener
        age = now - listener.last_received if listener.last_received else None
        status["subscribed"] = listener.subscribed
        # How far behind Redis we are: our last ping that came back was sent about then.
        status["last_round_trip_s"] = round(now - listener.last_pong, 3) if listener.last_pong else None
        fresh = age is not None and age < STUCK_AFTER + 2
        ok = status["redis"] == "ok" and self.listener.subscribed and fresh
        if not ok:
            status["reason"] = (
                "redis unreachable" if status["redis"] != "ok"
                else "not subscribed" if not self.listener.subscribed
                else "subscription not delivering"
            )
        # From the last look (housekeeping's), and only while Redis answers.
        inbox = self.inbox.stats() if status["redis"] == "ok" else None
        if inbox is not None:
            status["inbox"] = inbox
            if ok and inbox["oldest_s"] > INBOX_LATE_AFTER:
                ok, status["reason"] = False, f"inbox entries unrouted for over {INBOX_LATE_AFTER:.0f}s"
        status["ok"] = ok
        status["accepting"] = self.accepting()
        return ok, status

