"""Fixtures for the browser tests: Debian's Chromium driven by Playwright, and a demo server.

Playwright's own browser downloads are never used: we launch the system `chromium`
(installed with apt, as `.ci/run` does). Without it, every test here is skipped and says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from tests.conftest import shared_server
from tests.support.processes import ServerProcess

from .support import CHROMIUM, CHROMIUM_ARGS, DEADLINE_MS, LAPTOP, wait_online


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).is_file():
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does it): "
                    "browser tests skipped")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright's Python package is not installed (requirements-dev.txt)"
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def demo_server(redis_server: Any, logs_dir: Path) -> Iterator[ServerProcess]:
    """A server with the demo endpoints on, of the test's own, on an empty Redis: the
    tests use fixed names ("alice", "bob", "cats") that another test's leftovers would
    reach."""
    with shared_server(redis_server, logs_dir, demo=True) as proc:
        yield proc


class Requests:
    """Every URL the browser asked for: pages, scripts, fetches, WebSockets."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def leaving(self, host: str = "127.0.0.1") -> list[str]:
        """The URLs that went anywhere but `host` (data: and about: stay in the browser)."""
        return [u for u in self.urls
                if urlsplit(u).scheme not in ("data", "about", "blob") and urlsplit(u).hostname != host]


@pytest.fixture
def requests_seen() -> Requests:
    return Requests()


@pytest.fixture
def new_page(browser: Any, request: pytest.FixtureRequest, requests_seen: Requests,
             r: Any) -> Iterator[Callable[..., Any]]:
    """Open the demo in a new tab: `new_page("alice")`, each in a browser profile of its own.

    Separate contexts are separate profiles, like two people on two machines;
    `new_page(uid, context=page.context)` opens a second tab in the same profile.
    """
    contexts: list[Any] = []

    def open_page(uid: str | None = None, *, context: Any = None, server: ServerProcess | None = None,
                  viewport: dict[str, int] = LAPTOP, init_script: str | None = None,
                  query: str = "", wait_identified: bool = True) -> Any:
        if context is None:
            context = browser.new_context(viewport=viewport)
            if init_script:
                context.add_init_script(init_script)
            context.on("request", lambda request: requests_seen.urls.append(request.url))
            contexts.append(context)
        page = context.new_page()
        page.on("websocket", lambda ws: requests_seen.urls.append(ws.url))
        page.set_default_timeout(DEADLINE_MS)
        # The demo server only when the test names no server of its own: a second
        # process on the same Redis would make every test a cluster test.
        base = (server or request.getfixturevalue("demo_server")).url
        page.goto(base + ("/?uid=" + quote(uid, safe="") + query if uid else "/"))
        if uid and wait_identified:
            wait_online(page, uid)
        return page

    yield open_page
    for context in contexts:
        context.close()
