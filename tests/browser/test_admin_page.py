"""/admin in real Chromium: refused without the token; with it, live charts and numbers that
match what the test did. And what the demo page shows when socket.io-client is missing."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.clients import connected
from tests.support.processes import ServerProcess, checkout_without_npm, wait_until

from .support import DEADLINE_MS, LAPTOP, screenshot

expect = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed").expect

TOKEN = "browser-admin-token-0123456789"
CHARTS = ("chart-messages", "chart-sockets", "chart-identify", "chart-redis")

# How many pixels of each chart's canvas are painted (not transparent): uPlot drew it.
PAINTED = """(id) => {
  const canvas = document.querySelector('#' + id + ' canvas');
  if (!canvas) return 0;
  const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
  let painted = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
  return painted;
}"""


@pytest.fixture(scope="module")
def admin_server(redis_server: Any, logs_dir: Any) -> Any:
    proc = ServerProcess(redis_server.port, logs_dir, admin_token=TOKEN).start()
    yield proc
    proc.stop()


def admin_page(browser: Any, server: ServerProcess, credentials: dict[str, str] | None) -> tuple[Any, Any]:
    context = browser.new_context(viewport=LAPTOP, http_credentials=credentials)
    page = context.new_page()
    page.set_default_timeout(DEADLINE_MS)
    try:
        return page, page.goto(server.url + "/admin")
    except Exception:
        context.close()
        raise


def test_refused_without_the_token(browser, admin_server):
    # The server answers 401 (tests/test_admin.py). Chromium then shows that answer, or,
    # having no (other) credentials to offer, gives up on the page: either way none of the
    # page is shown. (Which of the two varies from run to run.)
    from playwright.sync_api import Error

    for credentials in (None, {"username": "admin", "password": "not-the-token-at-all"}):
        try:
            page, response = admin_page(browser, admin_server, credentials)
        except Error as exc:
            assert "ERR_INVALID_AUTH_CREDENTIALS" in str(exc)
            continue
        try:
            assert response.status == 401
            assert page.locator("canvas").count() == 0 and TOKEN not in page.content()
        finally:
            page.context.close()
    assert "Admin: refused credentials from 127.0.0.1" in admin_server.log()


def test_live_charts_and_numbers_that_match(browser, admin_server, r, uid):
    # Alone on its Redis, so that it queues every message for the away user itself.
    wait_until(lambda: admin_server.health()[1]["servers"] == 1, 15, "the other servers to be gone")
    n_sockets, m_live, k_queued = 5, 40, 6
    tabs = [connected(admin_server.url, {"uid": f"{uid}-{i}", "ack": True}) for i in range(n_sockets)]
    page, response = admin_page(browser, admin_server, {"username": "admin", "password": TOKEN})
    try:
        assert response.status == 200
        expect(page.locator("#tile-subscribed")).to_have_text("yes")
        expect(page.locator("#tile-sockets")).to_have_text(str(n_sockets))
        # Publish while the page watches, over a few polls, so the rate charts move.
        for i in range(m_live):
            r.publish(f"rm.users.{uid}-{i % n_sockets}", f"live {i}")
            if i % 10 == 9:
                page.wait_for_timeout(600)  # paces the publishes across polls; nothing waits on it
        for i in range(k_queued):
            r.publish(f"rm.users.{uid}-away", f"queued {i}")
        wait_until(lambda: sum(len(t.messages) for t in tabs) >= m_live, 10, "the tabs to get every message")
        assert sum(len(t.messages) for t in tabs) == m_live

        # The page's numbers are what the test did, counted by the test's own clients.
        expect(page.locator("#tile-delivered")).to_have_text(str(m_live), timeout=DEADLINE_MS)
        expect(page.locator("#tile-received")).to_have_text(str(m_live + k_queued))
        expect(page.locator("#tile-sockets")).to_have_text(str(n_sockets))
        expect(page.locator("#tile-failed")).to_have_text("0")
        server_id = admin_server.health()[1]["server"]
        row = page.locator(f'#servers tbody tr[data-server="{server_id}"]')
        expect(row.locator("td").nth(0)).to_have_text(f"{server_id} (this one)")
        expect(row.locator("td").nth(2)).to_have_text(str(n_sockets))
        first_queue = page.locator("#queues tbody tr").first
        expect(first_queue.locator("td").nth(0)).to_have_text(f"{uid}-away", timeout=DEADLINE_MS)
        expect(first_queue.locator("td").nth(1)).to_have_text(str(k_queued))

        # Every chart is drawn, and keeps taking points (one a second).
        for chart in CHARTS:
            wait_until(lambda c=chart: int(page.locator(f"#{c}").get_attribute("data-points") or 0) >= 5,
                       15, f"{chart} to hold 5 points")
            assert page.evaluate(PAINTED, chart) > 500, chart
        legend = page.locator("#chart-messages .u-legend").inner_text()
        assert "delivered/s" in legend and "recommitted/s" in legend
        expect(page.locator("#inbox")).to_contain_text("0 unhandled (oldest 0 s) · read here")
        screenshot(page, "admin-live.png")
    finally:
        page.context.close()
        for tab in tabs:
            tab.close()


def test_the_demo_page_says_socket_io_client_is_missing(browser, redis_server, logs_dir, tmp_path):
    bare = ServerProcess(redis_server.port, logs_dir, root=checkout_without_npm(tmp_path), demo=True).start()
    context = browser.new_context(viewport=LAPTOP)
    try:
        page = context.new_page()
        page.set_default_timeout(DEADLINE_MS)
        page.goto(bare.url + "/?uid=alice")
        notice = page.locator("#missing-client")
        expect(notice).to_be_visible()
        expect(notice).to_contain_text("socket.io-client is not installed")
        expect(notice).to_contain_text("npm ci")
        # The status line says it too, instead of "Connecting…" forever.
        expect(page.locator("#status")).to_have_text(
            "Cannot connect: socket.io-client did not load (/vendor/socket.io.min.js)")
        screenshot(page, "demo-missing-client.png")
    finally:
        context.close()
        bare.stop()
