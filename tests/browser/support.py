"""Helpers for the browser tests: where Chromium is, waits with deadlines, screenshots."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from tests.support.processes import ROOT, ServerProcess, wait_until

# CHROMIUM_PATH points at another build (or at nothing, to see the tests skip).
CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOTS = ROOT / "tests" / "screenshots"
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
DEADLINE_MS = 10_000

# Replaces the browser's Notification with one that records what would have popped up,
# with permission granted: headless Chromium shows nothing we could look at.
RECORD_NOTIFICATIONS = """
window.shown = [];
window.Notification = class {
  constructor(title, options) { window.shown.push({ title: title, body: options && options.body }); }
  static get permission() { return "granted"; }
  static requestPermission() { return Promise.resolve("granted"); }
};
"""


def wait_online(page: Any, uid: str) -> None:
    """Wait until the page says it is identified as `uid`."""
    from playwright.sync_api import expect

    status = page.locator("#status")
    expect(status).to_have_attribute("data-state", "identified", timeout=DEADLINE_MS)
    expect(status).to_have_text(f"Online as {uid}")


def wait_connections(server: ServerProcess, count: int) -> None:
    """Wait until the server holds exactly `count` sockets (e.g. after a tab closed)."""
    wait_until(lambda: server.health()[1]["connections"] == count, 10,
               f"{count} open sockets on the server", interval=0.05)


def received(page: Any) -> Any:
    """The messages the page shows as received (not the ones it sent)."""
    return page.locator("#messages .msg.in")


def send(page: Any, to: str, ident: str, text: str) -> None:
    """Send through the page's form, and wait until the page says it was published."""
    from playwright.sync_api import expect

    form = page.locator("#send-form")
    form.get_by_label("a group" if to == "group" else "a user").check()
    form.get_by_label("Group id" if to == "group" else "User id").fill(ident)
    form.get_by_label("Message").fill(text)
    before = page.locator("#messages .msg.out").count()
    form.get_by_role("button", name="Send").click()
    expect(page.locator("#messages .msg.out")).to_have_count(before + 1)
    expect(page.locator("#messages .msg.out").last.locator(".text")).to_have_text(text)


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), full_page=True)
    return path
