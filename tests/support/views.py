"""Views of a cluster fed by hand-made events, for unit tests of what every process decides."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
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


def random_events(views: list[View], uids: list[str], steps: int, seed: int,
                  death_at: int | None = None) -> Iterator[int]:
    """Feed `views` random identifies, leaves and drain ends of `uids` (and, at step
    `death_at`, the death of the first server); yield after each step."""
    rng = random.Random(seed)
    event = Events(*views)
    sids = count()
    first = views[0]
    for step in range(steps):
        uid, server = rng.choice(uids), rng.choice(first.servers)
        socks = first.sockets.get(uid, [])
        roll = rng.random()
        if step == death_at:
            event("down", first.servers[0])  # its sockets go with it
        elif roll < 0.45:
            event("on", server, c=f"s{next(sids)}", u=uid, x=[], d=int(not socks))
        elif roll < 0.8 and socks:
            gone_server, sid = rng.choice(socks)
            event("off", gone_server, c=sid, u=uid, r=0)
        elif uid in first.draining:
            event("ending", first.home(uid) or server, u=[uid], w=[], e=0)
        yield step
