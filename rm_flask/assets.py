"""Where the pages' files are: inside the installed package, else in the source checkout.

A wheel carries `templates/`, `static/` and the browser libraries from npm inside the
package (`setup.py` copies them in at build time). A checkout keeps them at the top level
and in `node_modules/`. This module is imported by `setup.py` too, so it imports nothing
but the standard library.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
CHECKOUT = PACKAGE.parent

# The files served under /vendor/: name -> (npm package, path inside it, media type, what
# needs it). Only these names are served; `setup.py` copies exactly these into a wheel.
VENDOR_FILES: dict[str, tuple[str, str, str, str]] = {
    "socket.io.min.js": ("socket.io-client", "dist/socket.io.min.js", "application/javascript",
                         "the demo page and the example client"),
    "socket.io.min.js.map": ("socket.io-client", "dist/socket.io.min.js.map", "application/json",
                             "debugging the demo page"),
    "uPlot.iife.min.js": ("uplot", "dist/uPlot.iife.min.js", "application/javascript",
                          "the charts of /admin"),
    "uPlot.min.css": ("uplot", "dist/uPlot.min.css", "text/css", "the charts of /admin"),
}
# Source maps help a developer; their absence is no reason to warn an operator.
OPTIONAL = {"socket.io.min.js.map"}


def _first(*candidates: Path) -> Path:
    for path in candidates:
        if path.exists():
            return path
    return candidates[-1]


def templates_dir() -> Path:
    return _first(PACKAGE / "templates", CHECKOUT / "templates")


def static_dir() -> Path:
    return _first(PACKAGE / "static", CHECKOUT / "static")


def vendor_path(name: str) -> Path:
    """Where vendor file `name` is (it may not exist: see `missing`)."""
    package, inside, _, _ = VENDOR_FILES[name]
    return _first(PACKAGE / "vendor" / name, CHECKOUT / "node_modules" / package / inside)


def missing() -> dict[str, str]:
    """The vendor files that are not installed -> what goes without them."""
    return {
        name: needed_by
        for name, (_, _, _, needed_by) in VENDOR_FILES.items()
        if name not in OPTIONAL and not vendor_path(name).is_file()
    }


def how_to_install() -> str:
    return ('run "npm ci" in the checkout, or install the wheel (pip install redmessenger-*.whl), '
            "which carries them")
