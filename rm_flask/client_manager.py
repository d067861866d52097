"""python-socketio's in-memory client manager, with a disconnect that does not slow down as
sockets add up."""

from __future__ import annotations

from typing import Any

import socketio


class ClientManager(socketio.Manager):
    """The library's manager, but a socket's rooms are remembered, not searched for.

    Its disconnect looks for the leaving socket in every room of the namespace, and every
    socket has a room of its own: n sockets leaving cost n² (a reconnect storm of 10,000
    spent most of its CPU there). Every socket is in the namespace's room (None) and its
    own; any other room it enters is noted here, so leaving is a few dictionary steps.
    """

    def __init__(self) -> None:
        super().__init__()
        self._other_rooms: dict[tuple[str, str], set[Any]] = {}  # (namespace, sid) -> rooms

    def basic_enter_room(self, sid: str, namespace: str, room: Any, eio_sid: str | None = None) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        if room is not None and room != sid:
            self._other_rooms.setdefault((namespace, sid), set()).add(room)

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)
        others = self._other_rooms.get((namespace, sid))
        if others is not None:
            others.discard(room)
            if not others:
                del self._other_rooms[(namespace, sid)]

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        rooms = self.rooms.get(namespace)
        if rooms is None:
            return
        for room in [*self._other_rooms.get((namespace, sid), ()), sid, None]:
            if room in rooms and sid in rooms[room]:
                self.basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            waiting = pending.get(namespace)
            if waiting and sid in waiting:
                waiting.remove(sid)
                if not waiting:
                    del pending[namespace]
