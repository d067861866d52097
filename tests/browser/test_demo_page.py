"""The demo chat page in real Chromium: what a person trying RedMessenger sees."""

from __future__ import annotations

import pytest

from tests.support.processes import wait_until

from .support import (
    PHONE,
    RECORD_NOTIFICATIONS,
    received,
    screenshot,
    send,
    wait_connections,
    wait_online,
)

expect = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed").expect


def test_two_users_chat_both_ways(new_page):
    alice = new_page("alice")
    bob = new_page("bob")
    send(alice, "user", "bob", "Hi Bob! Lunch?")
    expect(received(bob)).to_have_count(1)
    first = received(bob).first
    expect(first.locator(".text")).to_have_text("Hi Bob! Lunch?")
    expect(first.locator(".who")).to_have_text("alice → you")
    expect(first).to_have_attribute("data-queued", "false")
    expect(first).to_have_attribute("data-source", "rm.users.bob")

    send(bob, "user", "alice", "Sure, 12:30 at the usual place.")
    expect(received(alice)).to_have_count(1)
    expect(received(alice).first.locator(".text")).to_have_text("Sure, 12:30 at the usual place.")
    expect(received(alice).first.locator(".who")).to_have_text("bob → you")

    # The envelope, on demand.
    envelope = first.locator("details.envelope")
    envelope.locator("summary").click()
    expect(envelope.locator("pre")).to_contain_text('"source": "rm.users.bob"')
    expect(envelope.locator("pre")).to_contain_text('"bubble": true')
    screenshot(alice, "chat-alice.png")
    screenshot(bob, "chat-bob.png")


def test_messages_sent_while_away_arrive_in_order_from_the_queue(new_page, r):
    alice = new_page("alice")
    bob = new_page("bob")
    bob.close()
    for text in ["one", "two", "three"]:
        send(alice, "user", "bob", text)
    wait_until(lambda: r.llen("rm:users:bob:messages") == 3, 10, "three messages queued for bob")

    bob = new_page("bob", context=bob.context)  # the same browser, a new tab
    expect(received(bob).locator(".text")).to_have_text(["one", "two", "three"])
    for i in range(3):
        expect(received(bob).nth(i)).to_have_attribute("data-queued", "true")
        expect(received(bob).nth(i).locator(".badge.queued")).to_be_visible()
    send(alice, "user", "bob", "four, live")
    expect(received(bob)).to_have_count(4)
    expect(received(bob).last).to_have_attribute("data-queued", "false")
    expect(received(bob).last.locator(".badge.queued")).to_be_hidden()
    screenshot(bob, "queued-after-reopen.png")


def test_only_the_oldest_tab_bubbles(new_page, r, demo_server):
    wait_connections(demo_server, 0)  # the previous tests' tabs are gone
    first = new_page("carol", init_script=RECORD_NOTIFICATIONS)
    second = new_page("carol", context=first.context)
    wait_connections(demo_server, 2)
    r.publish("rm.users.carol", "Meeting moved to 3pm")
    for tab in (first, second):
        expect(received(tab)).to_have_count(1)
        expect(received(tab).first.locator(".text")).to_have_text("Meeting moved to 3pm")
    expect(received(first).first).to_have_attribute("data-bubble", "true")
    expect(received(second).first).to_have_attribute("data-bubble", "false")
    expect(received(second).first.locator(".badge.quiet")).to_be_visible()
    # The desktop notification pops up from the first tab only.
    assert first.evaluate("window.shown") == [
        {"title": "Message from rm.users.carol", "body": "Meeting moved to 3pm"}
    ]
    assert second.evaluate("window.shown") == []
    screenshot(first, "two-tabs-first.png")
    screenshot(second, "two-tabs-second.png")

    first.close()
    wait_connections(demo_server, 1)
    r.publish("rm.users.carol", "Now at 4pm")
    expect(received(second)).to_have_count(2)
    expect(received(second).last).to_have_attribute("data-bubble", "true")
    assert second.evaluate("window.shown") == [{"title": "Message from rm.users.carol", "body": "Now at 4pm"}]


def test_a_message_published_with_redis_py_appears(new_page, r):
    page = new_page("dave")
    assert r.publish("rm.users.dave", "Your order #1234 has shipped") == 1
    expect(received(page).first.locator(".text")).to_have_text("Your order #1234 has shipped")
    expect(received(page).first.locator(".who")).to_have_text("an app → you")
    r.publish("rm.users.dave", b"\xff\xfe binary")
    expect(received(page).nth(1).locator(".text")).to_have_text("(binary data, base64) //4gYmluYXJ5")
    screenshot(page, "published-with-redis-py.png")


def test_a_group_message_reaches_online_and_offline_members(new_page, r):
    alice = new_page("alice")
    bob = new_page("bob")
    for page in (alice, bob):
        page.get_by_label("Group id").fill("cats")
        page.get_by_role("button", name="Join").click()
        expect(page.locator("#groups li[data-group=cats]")).to_be_visible()
    assert r.smembers("rm:channels:cats:subscribers") == {b"alice", b"bob"}
    bob.close()
    send(alice, "group", "cats", "Meow!")
    expect(received(alice).first.locator(".who")).to_have_text("alice → #cats")
    # Bob is away: the group panel shows his message waiting in his queue.
    expect(alice.locator("#groups li[data-group=cats] .members")).to_contain_text("bob · 1 waiting")
    screenshot(alice, "group-alice.png")

    bob = new_page("bob", context=bob.context)
    expect(received(bob).first.locator(".text")).to_have_text("Meow!")
    expect(received(bob).first).to_have_attribute("data-queued", "true")
    expect(received(bob).first).to_have_attribute("data-source", "rm.channels.cats")
    bob.get_by_role("button", name="Leave #cats").click()
    expect(bob.locator("#groups li[data-group=cats]")).to_have_count(0)
    wait_until(lambda: r.smembers("rm:channels:cats:subscribers") == {b"alice"}, 5, "bob to leave")


def test_the_page_makes_no_request_beyond_127_0_0_1(new_page, requests_seen, r):
    signin = new_page()
    problems = []
    signin.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    signin.on("pageerror", lambda e: problems.append(str(e)))
    expect(signin.get_by_role("heading", name="Sign in")).to_be_visible()
    screenshot(signin, "sign-in.png")
    signin.get_by_label("Your user id").fill("erin")
    signin.get_by_role("button", name="Sign in").click()
    wait_online(signin, "erin")
    r.publish("rm.users.erin", "hello")
    expect(received(signin)).to_have_count(1)
    urls = requests_seen.urls
    assert any(u.endswith("/vendor/socket.io.min.js") for u in urls), urls
    assert any(u.startswith("ws://127.0.0.1:") for u in urls), urls
    assert requests_seen.leaving() == []
    assert problems == [], "no script errors, no CSP violations"


def test_the_page_fits_a_phone(new_page, r):
    page = new_page("frank", viewport=PHONE)
    r.publish("rm.users.frank", "A rather long message to see that it wraps on a narrow screen " * 3)
    expect(received(page)).to_have_count(1)
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"the page scrolls sideways: {width}"
    screenshot(page, "phone.png")


def test_the_readme_walkthrough(new_page, demo_server, r):
    """README: publish twice for user1 with no one there, then open /?uid=user1."""
    r.publish("rm.users.user1", "Hello, world!")
    r.publish("rm.users.user1", "My life is a spicy pepper...")
    wait_until(lambda: r.llen("rm:users:user1:messages") == 2, 10, "both messages queued")
    page = new_page("user1")
    expect(received(page).locator(".text")).to_have_text(["Hello, world!", "My life is a spicy pepper..."])
    for i in range(2):
        expect(received(page).nth(i)).to_have_attribute("data-queued", "true")
    screenshot(page, "readme-user1.png")
