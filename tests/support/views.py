"""Views of a cluster fed by hand-made events, for unit tests of what every process decides."""

from __future__ import annotations

import json
from itertools import count

from rm_flask.cluster import View
from rm_flask.cluster_events import parse


def wire(**fields) -> bytes:
    """An event as a script publishes it (one-letter keys)."""
    return json.dumps(fields).encode()


class Events:
    """Numbered events, as the scripts publish them."""

    def __init__(self, *views: View) -> None:
        self.views = views
        self.seq = count(1)

    def __call__(self, t: str, s: str, **fields) -> int:
        event = parse(wire(g=next(self.seq), t=t, s=s, **fields))
        for view in self.views:
            view.apply(event)
        return event.seq


def joined(me: str, servers: list[str]) -> View:
    view = View(me)
    view.load(0, "e1", servers, [], [])
    return view
