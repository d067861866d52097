"""recovery.Recovery without server processes: the ledger a survivor redoes from, and how
our `down` meets its event. (The system tests of recovery are in test_recovery.py.)"""

from __future__ import annotations

import json
import time
from typing import Any

from rm_flask.recovery import EntrySeen, Recovery, Seen
from rm_flask.sequence import Incoming


def ledger(*rows: tuple[str, str | None, str, int, int]) -> Recovery:
    """A Recovery whose copy of the sequence holds `rows`: (uid, duty, era, event, count)."""
    recovery = Recovery("A", store=None, cluster=None, view=None, metrics=None, spawn=None)
    for uid, duty, era, seq, n in rows:
        message = Incoming(f"rm.users.{uid}", f"{seq}.{n}".encode(), era, seq, n, received_ms=1)
        recovery.recent.append(Seen(time.monotonic(), uid, duty, message.fields()))
    return recovery


def payloads(owed: dict[str, list[tuple[str, str]]]) -> dict[str, list[str]]:
    return {uid: [json.loads(s)["payload"] for s, _ in items] for uid, items in owed.items()}


def test_the_ledger_gives_only_the_dead_servers_duty_inside_its_window():
    recovery = ledger(
        ("u", "B", "e1", 4, 1),  # before its checkpoint (event 5): it had handled it
        ("u", "B", "e1", 5, 2),
        ("v", "C", "e1", 6, 1),  # another's duty
        ("v", None, "e1", 6, 2),  # several processes held sockets: each delivered its own
        ("u", "B", "e1", 7, 1),
        ("u", "B", "e1", 9, 1),  # at or after its `down`: the view had it gone
    )
    assert payloads(recovery.owed_by("B", (5, 0), 9, "e1")) == {"u": ["5.2", "7.1"]}
    assert payloads(recovery.owed_by("B", (5, 2), 9, "e1")) == {"u": ["7.1"]}


def test_messages_of_an_earlier_era_count_only_without_a_checkpoint():
    recovery = ledger(("u", "B", "e0", 90, 1), ("u", "B", "e1", 3, 1))
    assert payloads(recovery.owed_by("B", (0, 0), 9, "e1")) == {"u": ["90.1", "3.1"]}
    assert payloads(recovery.owed_by("B", (2, 0), 9, "e1")) == {"u": ["3.1"]}


def test_a_redone_message_keeps_the_id_it_was_read_with():
    recovery = ledger(("u", "B", "e1", 0x1F, 2))
    ((stored, place),) = recovery.owed_by("B", (0, 0), 0x40, "e1")["u"]
    assert json.loads(stored)["id"] == "e1.1f.2"
    assert place == "e1.1f.2", "its place, given apart for the merge (an inbox id has none)"


def test_our_down_and_its_event_meet_whichever_comes_first():
    spawned: list[tuple[Any, ...]] = []
    for won_first in (True, False):
        recovery = Recovery("A", store=None, cluster=None, view=None, metrics=None,
                            spawn=lambda *call: spawned.append(call))
        if won_first:
            recovery.won("B", 12)
            recovery.read_down("B", 12)
        else:
            recovery.read_down("B", 12)
            recovery.won("B", 12)
        recovery.read_down("C", 13)  # a `down` another process won: not ours to redo
    assert [call[1:] for call in spawned] == [("B", 12), ("B", 12)]


def test_a_redo_notes_the_inbox_entries_of_the_window_for_the_server_it_was_for():
    noted: list[tuple[str, list[str], tuple[str, ...]]] = []
    recovery = Recovery("A", store=None, cluster=None, view=None, metrics=None, spawn=None,
                        note_routed=lambda server, ids, servers: noted.append((server, ids, tuple(servers))))
    for era, seq, count, entry, servers in [
        ("e1", 4, 1, "1-0", ("A", "B")),  # before the window: B noted it itself
        ("e1", 5, 1, "2-0", ("A", "B")),
        ("e1", 5, 2, "3-0", ("A", "B", "C")),  # another view: noted with it
        ("e1", 6, 1, "4-0", ("A", "C")),  # B was not in the view: not B's to note
        ("e0", 6, 2, "5-0", ("A", "B")),  # another era
        ("e1", 9, 1, "6-0", ("A", "B")),  # at its `down`: after the window
    ]:
        recovery.entries.append(EntrySeen(time.monotonic(), era, seq, count, entry, servers))
    recovery._note_entries("B", (4, 1), 9, "e1")
    assert noted == [("B", ["2-0"], ("A", "B")), ("B", ["3-0"], ("A", "B", "C"))]
