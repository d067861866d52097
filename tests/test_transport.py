"""The socket layer's own paths below python-socketio (`rm_flask/transport.py`), on a
real python-socketio server object with no network: which packets the `ack` fast path
takes, and that it hands every other one on untouched; and that a failed write leaves the
reading of what came in on (`ReadsToTheEnd`). The same paths end to end, with real
sockets: `tests/test_batch_acks.py`, and the FIN churn in `tests/test_faults.py`."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask_socketio import SocketIO

from rm_flask.transport import ReadsToTheEnd, SocketTransport, ack_ids

PREFIX = '2/rm,["ack",'


@pytest.mark.parametrize(("data", "ids"), [
    ('2/rm,["ack",["a","b"]]', ["a", "b"]),
    ('2/rm,["ack",[]]', []),
    ('2/rm,["ack","not a list"]', "not a list"),  # the handler says what is wrong
    ('2/rm,["ack",["a"],"more"]', ["a"]),
    ('2/rm,7["ack",["a"]]', None),  # asks for an answer: python-socketio's
    ('2/rm,["acknowledge",["a"]]', None),
    ('2/rm,["ack"]', None),
    ('2/rm,["ack",["a"]', None),  # not JSON
    ('2/other,["ack",["a"]]', None),
    ('2["ack",["a"]]', None),
    ('3/rm,1[]', None),
    (b'\x00binary', None),
])
def test_which_packets_are_ack_events(data: Any, ids: Any) -> None:
    assert ack_ids(data, PREFIX) == ids


@pytest.fixture
def wired():
    """A SocketIO server with one socket in /rm; python-socketio's own message handler
    replaced by a recorder, to see what the fast path hands on."""
    socketio = SocketIO(Flask(__name__), async_mode="threading")
    server = socketio.server
    onward: list[tuple[str, Any]] = []
    server.eio.handlers["message"] = lambda eio_sid, data: onward.append((eio_sid, data))
    taken: list[tuple[str, Any]] = []
    transport = SocketTransport(socketio, "/rm")
    transport.take_acks(lambda sid, ids: taken.append((sid, ids)))
    sid = server.manager.connect("eio-1", "/rm")
    return server.eio.handlers["message"], sid, taken, onward


def test_an_ack_event_is_handled_where_it_is_read(wired) -> None:
    message, sid, taken, onward = wired
    message("eio-1", '2/rm,["ack",["x","y"]]')
    assert taken == [(sid, ["x", "y"])] and onward == []


def test_every_other_packet_goes_on_to_python_socketio_as_it_came(wired) -> None:
    message, _, taken, onward = wired
    packets = ['2/rm,["identifier",{"uid":"u"}]', '2/rm,4["ack",["x"]]', '3/rm,1[]', '0/rm,',
               '2/rm,["ack",[', b"\x01\x02"]
    for data in packets:
        message("eio-1", data)
    # A socket not in our namespace (not connected, or gone) is python-socketio's to refuse.
    message("eio-2", '2/rm,["ack",["x"]]')
    assert taken == []
    assert onward == [("eio-1", p) for p in packets] + [("eio-2", '2/rm,["ack",["x"]]')]


def test_a_failing_ack_handler_is_logged_and_reading_goes_on(caplog) -> None:
    socketio = SocketIO(Flask(__name__), async_mode="threading")
    server = socketio.server
    server.eio.handlers["message"] = lambda *_: pytest.fail("handed on")

    def broken(sid: str, ids: Any) -> None:
        raise RuntimeError("boom")

    SocketTransport(socketio, "/rm").take_acks(broken)
    server.manager.connect("eio-1", "/rm")
    server.eio.handlers["message"]("eio-1", '2/rm,["ack",["x"]]')
    assert "ack handler error" in caplog.text


class _Inner:
    """gevent-websocket's websocket, as far as Engine.IO's wrapper uses it: frames that
    arrived, a write that fails once the other end has reset the connection."""

    version, path, origin, protocol = "13", "/socket.io/", None, None

    def __init__(self, frames: list[str]) -> None:
        self.frames = frames
        self.closed = False
        self.reset = False

    def send(self, message: Any) -> None:
        if self.reset:
            raise ConnectionResetError("reset by peer")

    def receive(self) -> Any:
        return None if self.closed or not self.frames else self.frames.pop(0)

    def close(self) -> None:
        self.closed = True


def _wrapped(inner: _Inner) -> ReadsToTheEnd:
    ws = ReadsToTheEnd(lambda ws: ws, None)
    return ws({"wsgi.websocket": inner}, None)


def test_after_a_failed_write_the_frames_already_in_are_still_read() -> None:
    inner = _Inner(['2/rm,["ack",["a"]]', '2/rm,["ack",["b"]]'])
    ws = _wrapped(inner)
    ws.send("4message")
    inner.reset = True
    with pytest.raises(ConnectionResetError):
        ws.send("4message")
    ws.close()  # what Engine.IO's writer does when a write fails
    assert not inner.closed
    assert [ws.wait(), ws.wait(), ws.wait()] == ['2/rm,["ack",["a"]]', '2/rm,["ack",["b"]]', None]


def test_a_close_with_no_failed_write_closes() -> None:
    inner = _Inner(['2/rm,["ack",["a"]]'])
    ws = _wrapped(inner)
    ws.send("4message")
    ws.close()
    assert inner.closed and ws.wait() is None


def test_a_gevent_server_reads_to_the_end_and_the_driver_is_left_as_it_was() -> None:
    from engineio.async_drivers import gevent as driver

    gevent_io = SocketIO(Flask(__name__), async_mode="gevent")
    SocketTransport(gevent_io, "/rm")
    assert gevent_io.server.eio._async["websocket"] is ReadsToTheEnd
    assert driver._async["websocket"] is not ReadsToTheEnd
    threaded = SocketIO(Flask(__name__), async_mode="threading")
    SocketTransport(threaded, "/rm")
    assert threaded.server.eio._async["websocket"] is not ReadsToTheEnd
