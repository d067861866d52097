"""The Lua scripts Redis runs for us, one file each.

Each file starts with what it does, why it must be one atomic step, and its KEYS and
ARGV, which it names in locals before anything else. A script that uses shared functions
says so with `after`: `position.lua` (where an envelope stands in the sequence) for the
queue scripts, `event.lua` (number and publish a cluster event) for the cluster's.
"""

from __future__ import annotations

from importlib.resources import files


def script(name: str, after: str | None = None) -> str:
    """The text of `name`.lua, behind the text of `after`.lua if given."""
    here = files(__package__)
    text = (here / f"{name}.lua").read_text(encoding="utf-8")
    if after is not None:
        text = (here / f"{after}.lua").read_text(encoding="utf-8") + text
    return text
