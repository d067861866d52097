"""Rules of SPEC.md written out again for the tests, independently of rm_flask: an oracle
that repeated the server's own code would agree with any bug in it."""

from __future__ import annotations

import unicodedata

from hypothesis import strategies as st


def valid_uid(value: object) -> bool:
    """SPEC §4: 1-256 characters, no ':', no whitespace, no control characters, and it
    encodes as UTF-8 (so no lone surrogates)."""
    if not isinstance(value, str) or not 1 <= len(value) <= 256 or ":" in value:
        return False
    if any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in value):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def any_char() -> st.SearchStrategy[str]:
    """Any code point at all, lone surrogates included and drawn often: as one of 1.1
    million code points they would almost never come up by chance."""
    return st.characters(codec=None, exclude_categories=()) | st.characters(codec=None, categories=["Cs"])


def any_text(alphabet: st.SearchStrategy[str] | None = None, min_size: int = 0,
             max_size: int | None = None) -> st.SearchStrategy[str]:
    """Text of `alphabet` (default `any_char()`). Not `st.text(alphabet)`: that merges a
    union of character ranges into one and then almost never draws a surrogate."""
    chars = any_char() if alphabet is None else alphabet
    return st.lists(chars, min_size=min_size, max_size=max_size).map("".join)
