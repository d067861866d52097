"""The client comes back by itself after temporary refusals (SPEC §4, issue 16 item 6).

Real Chromium, the real demo page, real servers and redis-servers; what arrived is counted
on the page.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import pytest
import redis

from tests.support.processes import ServerProcess, free_port, start_redis, wait_until

from .support import received

expect = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed").expect

# Long enough for several backoff rounds (1, 2, 4, 8, 16 s ceilings) and a busy machine.
COMEBACK_MS = 45_000

# Every text the status line shows, in order, so a test can tell what the reader saw.
RECORD_STATUS = """
window.statusLog = [];
document.addEventListener("DOMContentLoaded", function () {
  var status = document.getElementById("status");
  if (!status) return;
  new MutationObserver(function () {
    var last = window.statusLog[window.statusLog.length - 1];
    var entry = status.dataset.state + ": " + status.textContent;
    if (entry !== last) window.statusLog.push(entry);
  }).observe(status, { childList: true, characterData: true, subtree: true, attributes: true });
});
"""


def refusals(server: ServerProcess, uid: str, code: str) -> int:
    return sum(1 for line in server.log().splitlines()
               if f"Refusing identifier '{uid}'" in line and line.endswith(code))


def test_a_tab_opened_during_a_redis_outage_comes_back_by_itself(new_page, logs_dir, tmp_path):
    """Redis is down when the tab opens: it is refused `unavailable`, says it retries,
    and once Redis is back (same port) it identifies by itself and gets what is published."""
    own_redis = start_redis(tmp_path / "redis", persist=True)
    server = ServerProcess(own_redis.port, logs_dir, demo=True).start()
    client = redis.Redis(port=own_redis.port)
    try:
        own_redis.stop()
        wait_until(lambda: server.health()[0] == 503, 10, "the server to see Redis gone")
        page = new_page("olga", server=server, init_script=RECORD_STATUS, wait_identified=False)
        status = page.locator("#status")
        expect(status).to_have_attribute("data-state", "retrying", timeout=15_000)
        expect(status).to_contain_text("The server cannot reach Redis. Retrying in")
        expect(status).to_contain_text("(unavailable)")
        # Down long enough for the tab to have been refused more than once.
        wait_until(lambda: refusals(server, "olga", "unavailable") >= 2, 20, "a second refusal")
        refused = refusals(server, "olga", "unavailable")
        down_at = time.monotonic()

        own_redis.start()  # the same port and data folder
        expect(status).to_have_attribute("data-state", "identified", timeout=COMEBACK_MS)
        back_in = time.monotonic() - down_at
        assert client.publish("rm.users.olga", "after the outage") >= 1
        expect(received(page).locator(".text")).to_have_text(["after the outage"])
        log = page.evaluate("window.statusLog")
        print(f"refused unavailable {refused}x while Redis was down; identified {back_in:.1f}s "
              f"after Redis was back; the page showed: {log}")
        assert any(e.startswith("retrying: ") for e in log)
        assert log[-1] == "identified: Online as olga"
        assert received(page).count() == 1
    finally:
        server.stop()
        own_redis.stop()


def test_a_tab_opened_while_the_server_is_starting_gets_what_was_queued(
        new_page, demo_server, redis_server, logs_dir, r, requests_seen):
    """The tab's server is not up yet (its page came from elsewhere, say the app): the tab
    waits, and once the server has started it identifies by itself and shows what was
    queued for it meanwhile (by the other server on the same Redis), then live messages."""
    port = free_port()
    starting = ServerProcess(redis_server.port, logs_dir, demo=True, ws_port=port)
    page = new_page(wait_identified=False, init_script=RECORD_STATUS)

    def from_demo_server(route):
        # Page, script and style files come from the running server; the Socket.IO
        # connection goes to the port that is not listening yet.
        parts = urlsplit(route.request.url)
        route.fulfill(response=route.fetch(url=demo_server.url + parts.path
                                           + ("?" + parts.query if parts.query else "")))

    for pattern in ("/", "/?*", "/static/**", "/vendor/**"):
        page.route(f"http://127.0.0.1:{port}{pattern}", from_demo_server)
    try:
        page.goto(f"http://127.0.0.1:{port}/?uid=pia")
        status = page.locator("#status")
        expect(status).to_have_attribute("data-state", "waiting")
        expect(status).to_have_text("Waiting for the server…")
        assert r.publish("rm.users.pia", "while you were starting") >= 1
        wait_until(lambda: r.llen("rm:users:pia:messages") == 1, 10, "the message to be queued")

        started = time.monotonic()
        starting.start()
        expect(status).to_have_attribute("data-state", "identified", timeout=COMEBACK_MS)
        took = time.monotonic() - started
        expect(received(page).locator(".text")).to_have_text(["while you were starting"])
        expect(received(page).first).to_have_attribute("data-queued", "true")
        assert r.publish("rm.users.pia", "live") >= 1
        expect(received(page).locator(".text")).to_have_text(["while you were starting", "live"])
        assert r.llen("rm:users:pia:messages") == 0
        assert "Assigning id pia to socket" in starting.log()
        print(f"identified {took:.1f}s after the server was started; "
              f"refused unavailable {refusals(starting, 'pia', 'unavailable')}x; "
              f"the page showed: {page.evaluate('window.statusLog')}")
    finally:
        starting.stop()


# A stand-in for socket.io-client and for the page's timers, to check the retry rules
# one by one without waiting them out: the test plays the server and the clock. (The real
# thing is above.)
RETRY_HARNESS = """<!doctype html><script src="/static/redmessenger.js"></script><script>
window.timers = [];
window.setTimeout = function (fn, ms) { timers.push({ fn: fn, ms: ms, done: false }); return timers.length; };
window.clearTimeout = function (id) { if (timers[id - 1]) timers[id - 1].done = true; };
window.runTimer = function () {
  var timer = timers.filter(function (t) { return !t.done; }).pop();
  timer.done = true;
  timer.fn();
  return timer.ms;
};
window.fakeIo = function (url) {
  var handlers = {};
  var socket = {
    sent: [], replies: [], connected: false, active: false, connects: 0,
    on: function (name, fn) { handlers[name] = fn; return socket; },
    timeout: function () { return socket; },
    emit: function (name, data, callback) {
      socket.sent.push(data);
      var reply = socket.replies.shift() || { ok: true, uid: data.uid || data };
      if (reply === "no answer") callback(new Error("operation has timed out"));
      else callback(null, reply);
    },
    connect: function () { socket.connects += 1; socket.open(); },
    open: function () { socket.connected = socket.active = true; handlers.connect(); },
    disconnect: function () {
      var was = socket.connected;
      socket.connected = socket.active = false;
      if (was) handlers.disconnect("io client disconnect");
    },
    fire: function (name, data) { handlers[name](data); }
  };
  window.socket = socket;
  return socket;
};
</script>"""


def harness(new_page, demo_server):
    page = new_page(wait_identified=False)
    url = demo_server.url + "/retry-harness.html"
    page.route(url, lambda route: route.fulfill(status=200, content_type="text/html", body=RETRY_HARNESS))
    page.goto(url)
    return page


def test_temporary_refusals_are_retried_with_capped_jittered_backoff(new_page, demo_server):
    page = harness(new_page, demo_server)
    result = page.evaluate("""() => {
      var events = [];
      var rm = new RedMessenger("http://example.test/rm", { uid: "kai", io: fakeIo });
      ["identified", "error", "retrying", "disconnected"].forEach(function (name) {
        rm.on(name, function (d) { events.push([name, d && (d.code || d.uid || String(d.willRetry))]); });
      });
      var delays = [], states = [];
      socket.open();
      // Refused seven times in a row, by reply or by no answer at all; then served.
      socket.disconnect();
      socket.replies = [{ ok: false, error: "unavailable" }, "no answer",
                        { ok: false, error: "unavailable" }, { ok: false, error: "unavailable" },
                        { ok: false, error: "unavailable" }, { ok: false, error: "unavailable" },
                        { ok: false, error: "unavailable" }];
      var before = events.length;
      rm.connect();          // refused: unavailable
      for (var i = 0; i < 7; i++) {
        states.push(rm.state);
        delays.push(runTimer());  // the backoff ends: connect, identify again
      }
      states.push(rm.state);
      var retried = events.slice(before).filter(function (e) { return e[0] === "retrying"; }).length;
      // Served now; the next refusal starts the backoff from the bottom again.
      socket.fire("rm_error", { error: "conn_limit" });
      var afterServed = timers.filter(function (t) { return !t.done; }).pop().ms;
      return { delays: delays, states: states, retried: retried, afterServed: afterServed,
               connects: socket.connects, sent: socket.sent.length, state: rm.state,
               events: events.slice(0, 3) };
    }""")
    print("backoff delays (ms):", result["delays"], "then", result["afterServed"])
    ceilings = [1000, 2000, 4000, 8000, 16000, 30000, 30000]
    for delay, ceiling in zip(result["delays"], ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling, (delay, ceiling)
    assert len(set(result["delays"])) == len(result["delays"]), "jitter: no two waits alike"
    assert result["states"][:-1] == ["retrying"] * 7 and result["states"][-1] == "identified"
    assert result["retried"] == 7 and result["connects"] == 8
    assert 500 <= result["afterServed"] <= 1000, "being served resets the backoff"
    assert result["events"] == [["identified", "kai"], ["disconnected", "false"], ["error", "unavailable"]]


def test_rate_limited_waits_out_its_minute_and_final_refusals_stop(new_page, demo_server):
    page = harness(new_page, demo_server)
    result = page.evaluate("""() => {
      var out = {};
      var rm = new RedMessenger("http://example.test/rm", { uid: "kai", io: fakeIo });
      socket.replies = [{ ok: false, error: "rate_limited" }];
      socket.open();
      out.rateLimited = timers[timers.length - 1].ms;
      out.rateState = rm.state;
      runTimer();
      out.served = rm.state;
      ["unauthorized", "invalid_identifier"].forEach(function (code) {
        var r2 = new RedMessenger("http://example.test/rm", { uid: "kai", key: "k", io: fakeIo });
        var pending = timers.filter(function (t) { return !t.done; }).length;
        socket.replies = [{ ok: false, error: code }];
        socket.open();
        socket.fire("rm_error", { error: code });
        var added = timers.filter(function (t) { return !t.done; }).length - pending;
        out[code] = { state: r2.state, timers: added, active: socket.active };
      });
      // retry.min/max bound the backoff
      new RedMessenger("http://example.test/rm", { uid: "kai", io: fakeIo, retry: { min: 200, max: 800 } });
      socket.replies = [1, 2, 3, 4, 5, 6].map(function () { return { ok: false, error: "unavailable" }; });
      socket.open();
      var small = [];
      for (var i = 0; i < 5; i++) small.push(runTimer());
      out.small = small;
      return out;
    }""")
    assert 60_000 <= result["rateLimited"] <= 61_000, result
    assert result["rateState"] == "retrying" and result["served"] == "identified"
    for code in ("unauthorized", "invalid_identifier"):
        assert result[code] == {"state": "closed", "timers": 0, "active": False}, (code, result[code])
    ceilings = [200, 400, 800, 800, 800]
    assert all(c / 2 <= d <= c for d, c in zip(result["small"], ceilings, strict=True)), result["small"]


def test_get_token_is_called_before_every_identify(new_page, demo_server):
    page = harness(new_page, demo_server)
    result = page.evaluate("""async () => {
      var calls = 0, fail = false;
      var rm = new RedMessenger("http://example.test/rm", { uid: "kai", io: fakeIo,
        getToken: function (uid) {
          calls += 1;
          if (fail) return Promise.reject(new Error("login view down"));
          return Promise.resolve("token-" + uid + "-" + calls);
        } });
      var errors = [];
      rm.on("error", function (e) { errors.push(e.code); });
      var tick = function () { return new Promise(function (resolve) { Promise.resolve().then(resolve); }); };
      socket.open(); await tick(); await tick();
      socket.disconnect(); socket.open(); await tick(); await tick();   // a reconnect
      fail = true;
      socket.disconnect(); socket.open(); await tick(); await tick();   // getToken fails
      var state = rm.state;
      fail = false;
      runTimer(); await tick(); await tick();                          // retried after the backoff
      return { sent: socket.sent, calls: calls, errors: errors, stateAfterFailure: state, state: rm.state };
    }""")
    assert result["sent"] == [
        {"uid": "kai", "ack": "batch", "token": "token-kai-1"},
        {"uid": "kai", "ack": "batch", "token": "token-kai-2"},
        {"uid": "kai", "ack": "batch", "token": "token-kai-4"},
    ]
    assert result["calls"] == 4 and result["errors"] == ["token_error"]
    assert result["stateAfterFailure"] == "retrying" and result["state"] == "identified"


def test_a_tab_refused_conn_limit_comes_back_when_a_slot_frees(new_page, make_server, r):
    server = make_server(demo=True, conn_limit=1)
    first = new_page("quinn", server=server)
    second = new_page("rosa", server=server, init_script=RECORD_STATUS, wait_identified=False)
    status = second.locator("#status")
    expect(status).to_have_attribute("data-state", "retrying")
    expect(status).to_contain_text("The server is full. Retrying in")
    wait_until(lambda: server.log().count("Refusing connection") >= 2, 20, "a second refusal")
    first.close()
    expect(status).to_have_attribute("data-state", "identified", timeout=COMEBACK_MS)
    assert r.publish("rm.users.rosa", "there is room now") >= 1
    expect(received(second).locator(".text")).to_have_text(["there is room now"])
    print(f"refused conn_limit {server.log().count('Refusing connection')}x; "
          f"the page showed: {second.evaluate('window.statusLog')}")
