"""sequence: a message's place, and messages put in the order of the sequence."""

from __future__ import annotations

from rm_flask import envelope
from rm_flask.envelope import Message
from rm_flask.sequence import in_sequence, message_id


def msg(msg_id: str) -> Message:
    return Message(envelope.make("rm.users.u", b"x", 1, msg_id))


def test_ours_go_in_the_order_their_ids_name_each_once_and_others_keep_their_places():
    given = [msg(message_id("E", 5, 1)), msg("foreign1"), msg(message_id("E", 2, 0)),
             msg(message_id("old", 9, 9)), msg(message_id("E", 2, 0)), msg(message_id("E", 1, 0x13))]
    assert [m.id for m in in_sequence(given, "E")] == ["E.1.13", "foreign1", "E.2.0", "old.9.9", "E.5.1"]


def test_counts_compare_as_numbers_not_as_text():
    given = [msg(message_id("E", 0x10, 2)), msg(message_id("E", 9, 0xA)), msg(message_id("E", 9, 2))]
    assert [m.id for m in in_sequence(given, "E")] == ["E.9.2", "E.9.a", "E.10.2"]


def test_inbox_messages_go_in_the_streams_order_among_themselves_in_their_own_slots():
    given = [msg("i-20-0"), msg(message_id("E", 5, 1)), msg("i-3-1"), msg("i-3-0"),
             msg(message_id("E", 2, 0)), msg("i-100-0")]
    ordered = ["i-3-0", "E.2.0", "i-3-1", "i-20-0", "E.5.1", "i-100-0"]
    assert [m.id for m in in_sequence(given, "E")] == ordered
