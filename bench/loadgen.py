"""A lean Socket.IO v5 / Engine.IO v4 client over aiohttp websockets, and a process pool of them.

python-socketio's AsyncClient tops out near 13k msg/s in one process, which is below what the
servers under test deliver, so this speaks the few frames the benchmark needs directly:

    server: 0{open json}            client: 40/rm,           (connect the namespace)
    server: 40/rm,{"sid": ...}      client: 42/rm,1["identifier", {"uid": "u1", "ack": true}]
    server: 43/rm,1[{"ok": true}]   (identify confirmed; the uid is now registered)
    server: 42/rm,17["message", {envelope}]   client: 43/rm,17[]   (ack mode)
    server: 42/rm,["message", {envelope}]     (no-ack mode: nothing to answer)
    server: 2                       client: 3                 (Engine.IO ping/pong)

Many clients share one asyncio loop per worker process; ``Pool`` forks several workers so the
load generator is not the bottleneck, and the parent steers them through pipes. Each worker
bumps its own slot of a shared counter per unique message so the publisher can pace itself
on deliveries without a round trip.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import random
import signal
import time
from array import array
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
import psutil

try:  # orjson parses envelopes ~2x faster; optional so the bench needs nothing exotic
    import orjson

    _loads: Callable[[str], Any] = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads

NAMESPACE = "/rm"
EVENT = "42/rm,"
ACK = "43/rm,"
CONNECTED = "40/rm"
CONNECT_ERROR = "44/rm"
DISCONNECT = "41/rm"
# Batch acks (SPEC §4), as the JS client sends them: one `ack` event per 50 ms or 100 ids.
BATCH_ACK_S = 0.05
BATCH_ACK_IDS = 100

Ack = bool | str  # False, True (an ack per message), or "batch"


class ProtocolError(Exception):
    """The server answered something other than the handshake the benchmark expects."""


def parse_payload(payload: str) -> tuple[int, int]:
    """Publisher payloads are ``"<seq>:<publish time_ns>[:<padding>]"``."""
    seq, _, rest = payload.partition(":")
    return int(seq), int(rest.partition(":")[0])


class Tracker:
    """Per-worker delivery accounting: latency, duplicates, order, per (uid, source) stream."""

    def __init__(self, counter: Any, idx: int) -> None:
        self.counter = counter
        self.idx = idx
        self.reset()

    def reset(self) -> None:
        self.lat_ms = array("d")
        self.received = 0
        self.unique = 0
        self.dup = 0
        self.ooo = 0
        self.foreign = 0
        self.bubble_false = 0
        self.first_ns = 0
        self.last_ns = 0
        self.events: Counter[str] = Counter()
        # key "uid|source" -> [highest seq seen, set of seqs seen]
        self.streams: dict[str, tuple[list[int], set[int]]] = {}
        self.counter[self.idx] = 0

    def on_message(self, uid: str, env: dict[str, Any]) -> None:
        now = time.time_ns()
        try:
            seq, sent_ns = parse_payload(env["payload"])
            key = uid + "|" + env["source"]
        except (KeyError, TypeError, ValueError):
            self.foreign += 1
            return
        self.received += 1
        if not self.first_ns:
            self.first_ns = now
        self.last_ns = now
        if env.get("bubble") is False:
            self.bubble_false += 1
        stream = self.streams.get(key)
        if stream is None:
            stream = self.streams[key] = ([-1], set())
        top, seen = stream
        if seq in seen:
            self.dup += 1
            return
        seen.add(seq)
        self.unique += 1
        self.counter[self.idx] += 1
        self.lat_ms.append((now - sent_ns) / 1e6)
        if seq < top[0]:
            self.ooo += 1
        else:
            top[0] = seq

    def snapshot(self, detail: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "received": self.received, "unique": self.unique, "dup": self.dup,
            "ooo": self.ooo, "foreign": self.foreign, "bubble_false": self.bubble_false,
            "first_ns": self.first_ns, "last_ns": self.last_ns,
            "lat_ms": self.lat_ms.tobytes(), "events": dict(self.events),
        }
        if detail:
            out["streams"] = {k: sorted(v[1]) for k, v in self.streams.items()}
        return out


class SioClient:
    """One browser-like socket: connect, join the namespace, identify, then receive."""

    def __init__(
        self, session: aiohttp.ClientSession, url: str, uid: str, ack: Ack, tracker: Tracker
    ) -> None:
        self.session = session
        self.url = url
        self.uid = uid
        self.ack = ack
        self._acks: list[str] = []  # batch mode: ids handled, not acknowledged yet
        self._ack_timer: asyncio.TimerHandle | None = None
        self.tracker = tracker
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.task: asyncio.Task[None] | None = None

    async def open(self, timeout: float) -> None:
        self.ws = await self.session.ws_connect(
            self.url, autoping=False, heartbeat=None, compress=0, max_msg_size=0,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
        )
        first = await asyncio.wait_for(self.ws.receive(), timeout)
        if first.type is not aiohttp.WSMsgType.TEXT or not first.data.startswith("0"):
            raise ProtocolError(f"no Engine.IO open packet: {first.type} {first.data!r:.80}")
        await self.ws.send_str(CONNECTED + ",")
        await self._expect(CONNECTED, timeout)
        # The ack-mode identify is the project's own client; the string form is the seed's.
        ident: Any = {"uid": self.uid, "ack": self.ack} if self.ack else self.uid
        await self.ws.send_str(EVENT + "1" + json.dumps(["identifier", ident]))
        reply = await self._expect(ACK + "1[", timeout)
        body = _loads(reply[len(ACK) + 1:])
        if not body or not isinstance(body[0], dict) or not body[0].get("ok"):
            raise ProtocolError(f"identify refused: {reply:.120}")

    async def _expect(self, prefix: str, timeout: float) -> str:
        """Wait for a control frame, handling pings and early messages (a queue drain may
        start before the identify reply arrives)."""
        assert self.ws is not None
        deadline = time.monotonic() + timeout
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), max(deadline - time.monotonic(), 0.01))
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise ProtocolError(f"socket closed while waiting for {prefix}: {msg.type}")
            data: str = msg.data
            if data.startswith(prefix):
                return data
            if data.startswith(CONNECT_ERROR) or data.startswith(DISCONNECT):
                raise ProtocolError(f"refused: {data:.120}")
            await self._handle(data)

    async def _handle(self, data: str) -> bool:
        """Handle one frame; False when the server ended the session."""
        assert self.ws is not None
        if data.startswith(EVENT):
            start = 6
            ack_id = None
            if data[6] != "[":
                start = data.index("[", 6)
                ack_id = data[6:start]
            event = _loads(data[start:])
            if event[0] == "message":
                self.tracker.on_message(self.uid, event[1])
                if ack_id is None and self.ack == "batch":
                    self._acks.append(event[1]["id"])
                    if len(self._acks) >= BATCH_ACK_IDS:
                        await self._send_acks()
                    elif self._ack_timer is None:
                        self._ack_timer = asyncio.get_running_loop().call_later(
                            BATCH_ACK_S, lambda: asyncio.ensure_future(self._send_acks()))
            else:
                self.tracker.events[str(event[0])] += 1
            if ack_id is not None:
                await self.ws.send_str(ACK + ack_id + "[]")
        elif data == "2":
            await self.ws.send_str("3")
        elif data.startswith(DISCONNECT) or data == "1":
            return False
        return True

    async def _send_acks(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        ids, self._acks = self._acks, []
        if ids and self.ws is not None and not self.ws.closed:
            try:
                await self.ws.send_str(EVENT + json.dumps(["ack", ids]))
            except ConnectionError:
                pass  # closing: the server gives what was not acknowledged back

    async def run(self) -> None:
        assert self.ws is not None
        receive = self.ws.receive
        handle = self._handle
        text = aiohttp.WSMsgType.TEXT
        while True:
            msg = await receive()
            if msg.type is not text or not await handle(msg.data):
                return

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass
        if self.ws is not None and not self.ws.closed:
            try:
                await self.ws.close()
            except Exception:
                pass


class Worker:
    """One load-generator process: a command loop on a pipe plus many ``SioClient``s."""

    def __init__(self, conn: Connection, counter: Any, idx: int) -> None:
        self.conn = conn
        self.tracker = Tracker(counter, idx)
        self.clients: list[SioClient] = []
        self.cmds: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.session: aiohttp.ClientSession | None = None
        self.churn_tasks: list[asyncio.Task[None]] = []
        self.churn_stop = asyncio.Event()
        self.churn_cycles = 0
        self.errors: Counter[str] = Counter()

    def _on_readable(self) -> None:
        try:
            self.cmds.put_nowait(self.conn.recv())
        except EOFError:  # parent went away: stop
            asyncio.get_running_loop().remove_reader(self.conn.fileno())
            self.cmds.put_nowait({"op": "exit"})

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.conn.fileno(), self._on_readable)
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        self.session = aiohttp.ClientSession(connector=connector)
        try:
            while True:
                cmd = await self.cmds.get()
                if cmd["op"] == "exit":
                    break
                handler = getattr(self, "op_" + cmd["op"])
                try:
                    reply = await handler(**{k: v for k, v in cmd.items() if k != "op"})
                except Exception as exc:  # report, don't die: the parent decides
                    reply = {"error": repr(exc)}
                self.conn.send(reply)
        finally:
            await self.op_close()
            await self.session.close()

    async def _open_one(self, url: str, uid: str, ack: Ack, timeout: float) -> SioClient | None:
        assert self.session is not None
        for attempt in range(3):
            client = SioClient(self.session, url, uid, ack, self.tracker)
            try:
                await client.open(timeout)
                return client
            except Exception as exc:
                self.errors[type(exc).__name__ + ": " + str(exc)[:80]] += 1
                await client.close()
                await asyncio.sleep(0.1 * (attempt + 1))
        return None

    async def op_connect(
        self, url: str, uids: list[str], ack: Ack, conc: int, timeout: float
    ) -> dict[str, Any]:
        sem = asyncio.Semaphore(conc)  # bounded so the server's accept backlog never overflows

        async def one(uid: str) -> bool:
            async with sem:
                client = await self._open_one(url, uid, ack, timeout)
            if client is None:
                return False
            client.start()
            self.clients.append(client)
            return True

        self.errors.clear()
        t0 = time.time_ns()
        ok = sum(await asyncio.gather(*(one(u) for u in uids)))
        return {"ok": ok, "failed": len(uids) - ok, "t0": t0, "t1": time.time_ns(),
                "errors": dict(self.errors.most_common(3))}

    async def op_reset(self) -> dict[str, Any]:
        self.tracker.reset()
        return {}

    async def op_stats(self, detail: bool = False) -> dict[str, Any]:
        out = self.tracker.snapshot(detail)
        out["open"] = sum(1 for c in self.clients if c.task is not None and not c.task.done())
        return out

    async def op_close(self) -> dict[str, Any]:
        clients, self.clients = self.clients, []
        await asyncio.gather(*(c.close() for c in clients))
        return {"closed": len(clients)}

    async def _churn_one(
        self, url: str, uid: str, on_s: tuple[float, float], off_s: tuple[float, float],
        seed: int,
    ) -> None:
        rng = random.Random(seed)
        stop = self.churn_stop
        await asyncio.sleep(rng.uniform(0, off_s[1]))  # de-synchronise the herd
        while not stop.is_set():
            client = await self._open_one(url, uid, True, 10.0)
            if client is not None:
                self.churn_cycles += 1
                client.start()
                try:
                    await asyncio.wait_for(stop.wait(), rng.uniform(*on_s))
                except TimeoutError:
                    pass
                await client.close()
            if stop.is_set():
                break
            try:
                await asyncio.wait_for(stop.wait(), rng.uniform(*off_s))
            except TimeoutError:
                pass

    async def op_churn(
        self, url: str, uids: list[str], on_s: tuple[float, float], off_s: tuple[float, float],
        seed: int,
    ) -> dict[str, Any]:
        self.churn_stop.clear()
        self.churn_cycles = 0
        loop = asyncio.get_running_loop()
        self.churn_tasks = [
            loop.create_task(self._churn_one(url, uid, on_s, off_s, seed + i))
            for i, uid in enumerate(uids)
        ]
        return {"started": len(uids)}

    async def op_churn_stop(self) -> dict[str, Any]:
        self.churn_stop.set()
        await asyncio.gather(*self.churn_tasks, return_exceptions=True)
        self.churn_tasks = []
        return {"cycles": self.churn_cycles, "errors": dict(self.errors.most_common(3))}


def _worker_entry(conn: Connection, counter: Any, idx: int) -> None:
    # Ctrl-C is the parent's to handle; it tears the pool down in its ``finally``.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(Worker(conn, counter, idx).main())


class Pool:
    """The parent's handle on the load-generator processes."""

    def __init__(self, nprocs: int) -> None:
        ctx = mp.get_context("fork")  # fork: cheap, and the child needs nothing re-imported
        self.counter = ctx.RawArray("q", nprocs)
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for i in range(nprocs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_entry, args=(child, self.counter, i), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def __len__(self) -> int:
        return len(self.procs)

    def split(self, items: list[str]) -> list[list[str]]:
        return [items[i:: len(self.procs)] for i in range(len(self.procs))]

    def call(self, cmds: list[dict[str, Any]], timeout: float = 120.0) -> list[dict[str, Any]]:
        """Send one command per worker, then gather every reply (they run in parallel)."""
        for conn, cmd in zip(self.conns, cmds, strict=True):
            conn.send(cmd)
        replies = []
        deadline = time.monotonic() + timeout
        for conn in self.conns:
            if not conn.poll(max(deadline - time.monotonic(), 0)):
                raise TimeoutError(f"load-generator worker did not answer {cmds[0]['op']}")
            reply = conn.recv()
            if "error" in reply:
                raise RuntimeError(f"load-generator worker failed: {reply['error']}")
            replies.append(reply)
        return replies

    def broadcast(self, cmd: dict[str, Any], timeout: float = 120.0) -> list[dict[str, Any]]:
        return self.call([cmd] * len(self.procs), timeout)

    def received(self) -> int:
        return int(sum(self.counter))

    def processes(self) -> dict[str, psutil.Process]:
        return {f"client{i}": psutil.Process(p.pid) for i, p in enumerate(self.procs)}

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send({"op": "exit"})
            except OSError:
                pass
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        for conn in self.conns:
            conn.close()
