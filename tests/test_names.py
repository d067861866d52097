"""Redis names and id validation (SPEC §2)."""

from __future__ import annotations

import pytest
from hypothesis import given

from rm_flask import names
from tests.support import spec


def test_names_are_the_seeds():
    assert names.user_channel("user1") == "rm.users.user1"
    assert names.queue_key("user1") == "rm:users:user1:messages"
    assert names.user_key_key("user1") == "rm:users:user1:key"
    assert names.group_members_key("cats") == "rm:channels:cats:subscribers"


@pytest.mark.parametrize("good", ["a", "user1", "ü-ñ_é.😀", "x" * 256, "a.b", "%41"])
def test_valid_ids(good):
    assert names.valid_id(good)


@pytest.mark.parametrize("bad", ["", "a:b", "a b", "a\nb", "a\tb", "\x00", "\x7f", "\x85", "x" * 257,
                                 None, 5, ["a"], "a\u2028b"])
def test_invalid_ids(bad):
    assert not names.valid_id(bad)


@given(spec.any_text(max_size=300))
def test_valid_id_is_specs_rule(value):
    """SPEC §4, written out independently in tests/support/spec.py, over any text at all,
    lone surrogates included."""
    assert names.valid_id(value) == spec.valid_uid(value)


@pytest.mark.parametrize("lone", ["x\ud800", "\udfff", "a\udc80b"])
def test_a_uid_that_utf8_cannot_encode_is_invalid(lone):
    assert not names.valid_id(lone)


def test_parse_channel():
    assert names.parse_channel("rm.users.user1") == ("user", "user1")
    assert names.parse_channel("rm.channels.cats") == ("group", "cats")
    assert names.parse_channel("rm.groups.cats") == ("group", "cats")
    assert names.parse_channel("rm.users.a:b") is None
    assert names.parse_channel("rm.other.x") is None
    assert names.parse_channel("rm.users.") is None
