"""A TCP proxy in front of a server that can make a client vanish without a FIN.

A tab whose network goes away (a laptop lid closed, a phone leaving Wi-Fi) sends nothing:
no close frame, no FIN, no RST. The server learns of it only when Engine.IO's pings go
unanswered (`ping_interval` + `ping_timeout`). Closing the client's socket, as
`RMClient.drop` does, is not that: the server's kernel sees the FIN at once. So a tab that
must vanish connects through a `Proxy`, and `cut` stops that connection dead in both
directions: nothing is read or written any more, and its sockets stay open, so neither
end is told anything, until the test stops the proxy.

127.0.0.1 only; one asyncio loop in a thread of its own; stopped by the test (`stop`).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

_CHUNK = 65536


@dataclass
class _Pipe:
    """One client connection and the proxy's connection to the server for it."""

    client: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    server: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    pumps: list[asyncio.Task[None]] = field(default_factory=list)
    cut: bool = False
    closed: int = 0  # directions that saw a clean close

    def writers(self) -> list[asyncio.StreamWriter]:
        return [self.client[1], self.server[1]]


class Proxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target_port`, byte for byte."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.cuts = 0
        self._pipes: dict[int, _Pipe] = {}  # by the client's own port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Proxy:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self, client_port: int) -> None:
        """Stop forwarding, both ways, for the connection from `client_port`, leaving its
        sockets open: neither end is told. Returns once nothing more will pass."""

        async def cut() -> None:
            pipe = self._pipes.get(client_port)
            if pipe is None:
                raise KeyError(f"no connection from port {client_port} through this proxy")
            pipe.cut = True
            for writer in pipe.writers():
                writer.transport.pause_reading()  # the kernel's buffers fill, as on a dead path
            for task in pipe.pumps:
                task.cancel()
            self.cuts += 1

        self._call(cut())

    def stop(self) -> None:
        """Close every connection (the server then sees them go) and the listener."""

        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for pipe in list(self._pipes.values()):
                for task in pipe.pumps:
                    task.cancel()
                for writer in pipe.writers():
                    writer.transport.abort()
            self._pipes.clear()

        if self._thread.is_alive():
            self._call(stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()

    def _call(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client_port = writer.get_extra_info("peername")[1]
        try:
            upstream = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        pipe = _Pipe((reader, writer), upstream)
        self._pipes[client_port] = pipe
        pipe.pumps = [asyncio.ensure_future(self._pump(pipe, reader, upstream[1])),
                      asyncio.ensure_future(self._pump(pipe, upstream[0], writer))]

    async def _pump(self, pipe: _Pipe, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while not pipe.cut:
                data = await source.read(_CHUNK)
                if pipe.cut:
                    return
                if not data:  # a clean close: pass the FIN on, as a network would
                    if sink.can_write_eof():
                        sink.write_eof()
                    pipe.closed += 1
                    if pipe.closed == 2:  # both ways: this connection is over
                        for writer in pipe.writers():
                            writer.close()
                        self._pipes.pop(pipe.client[1].get_extra_info("peername")[1], None)
                    return
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            if not pipe.cut:
                for writer in pipe.writers():
                    writer.transport.abort()
