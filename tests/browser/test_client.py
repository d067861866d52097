"""static/redmessenger.js in real Chromium: the API, the seed's client, reconnects, errors."""

from __future__ import annotations

import re

import pytest

from tests.support.processes import ROOT, wait_until

from .support import DEADLINE_MS, received

expect = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed").expect

# The original project's example client, verbatim (seed: client/redmessenger.js).
SEED_CLIENT = """
function RedMessenger(url, userId, userKey) {
this.url = url;
this.userId = userId;
this.userKey = userKey || '';
var socket; // Our sockets.io socket
if (io) {
socket = io(this.url);
socket.on('connect', function() {
console.log("Connected to RedMessenger!");
var identifier = this.generateIdentifier();
console.log("Authenticating...");
socket.emit('identifier', identifier);
}.bind(this));
socket.on('message', function(message) {
this.onMessage(message);
}.bind(this));
}
this.onMessage = function(message) {
console.log("Message from " + message.source + ": " + message.payload);
}
this.generateIdentifier = function () {
return this.userId + ":" + this.userKey;
}
}
"""


def serve(page, url: str, html: str) -> None:
    """Answer `url` with `html` in the browser, so a test page shares the server's origin."""
    page.route(url, lambda route: route.fulfill(status=200, content_type="text/html", body=html))


def test_a_seed_style_client_still_works(new_page, demo_server, r):
    page = new_page(wait_identified=False)
    url = demo_server.url + "/seed.html"
    serve(page, url, f"""<!doctype html><script src="/vendor/socket.io.min.js"></script>
        <script>{SEED_CLIENT}
        window.got = [];
        var rm = new RedMessenger(location.origin + "/rm", "hana");
        rm.onMessage = function (message) {{ window.got.push(message); }};
        </script>""")
    page.goto(url)
    wait_until(lambda: "Assigning id hana to socket" in demo_server.log(), 10, "the seed client to identify")
    r.publish("rm.users.hana", "Hello, world!")
    page.wait_for_function("window.got.length === 1", timeout=DEADLINE_MS)
    message = page.evaluate("window.got[0]")
    assert message["payload"] == "Hello, world!" and message["bubble"] is True
    assert message["source"] == "rm.users.hana"


def test_the_example_in_the_library_header_runs_as_written(new_page, demo_server, r, tmp_path):
    header = (ROOT / "static" / "redmessenger.js").read_text().split("*/", 1)[0]
    lines = header.splitlines()
    start = lines.index(' *   <pre id="log"></pre>')
    end = lines.index(" *   </script>", start)
    example = "\n".join(line[len(" *   "):] for line in lines[start:end + 1])
    assert "http://127.0.0.1:8080" in example
    # Saved as a file and opened from disk, as the header says; only the port is ours.
    path = tmp_path / "example.html"
    path.write_text(example.replace("http://127.0.0.1:8080", demo_server.url))
    page = new_page(wait_identified=False)
    page.goto(path.as_uri())
    wait_until(lambda: "Assigning id user1 to socket" in demo_server.log(), 10, "the example to identify")
    r.publish("rm.users.user1", "Hello, world!")
    expect(page.locator("#log")).to_have_text("rm.users.user1: Hello, world!\n")


def test_messages_are_acknowledged(new_page, r):
    page = new_page("ivan")
    r.publish("rm.users.ivan", "ack me")
    expect(received(page)).to_have_count(1)
    # An ack-mode message stays in flight in Redis until the tab acknowledges it.
    wait_until(lambda: not r.keys("rm:inflight:*:ivan"), 10, "the message to be acknowledged")


def test_the_client_identifies_again_after_a_reconnect(new_page, make_server, r):
    server = make_server(demo=True)
    page = new_page("gina", server=server)
    server.restart()  # kill -9, then the same port again
    status = page.locator("#status")
    expect(status).to_have_attribute("data-state", "identified", timeout=20_000)
    wait_until(lambda: server.log().count("Assigning id gina to socket") == 2, 10, "a second identify")
    r.publish("rm.users.gina", "after the restart")
    expect(received(page).locator(".text")).to_have_text(["after the restart"])


def test_a_wrong_key_is_an_error_and_is_not_retried(new_page, make_server, r):
    server = make_server(demo=True, secure_mode=True)
    r.set("rm:users:jo:key", "s3cret")
    page = new_page("jo", server=server, query="&key=wrong", wait_identified=False)
    status = page.locator("#status")
    expect(status).to_have_attribute("data-state", "error")
    expect(status).to_contain_text("(unauthorized)")
    assert "key=" not in page.url, "the key is taken out of the address bar"
    page.wait_for_function("document.title.startsWith('jo')")
    assert page.evaluate("sessionStorage.getItem('rm-demo-key:jo')") == "wrong"

    right = new_page("jo", server=server, query="&key=s3cret")
    assert "key=" not in right.url
    assert server.log().count("Refusing identifier 'jo'") == 1, "no retry loop after unauthorized"
    assert "s3cret" not in server.log() and "wrong" not in server.log()


LIBRARY_HARNESS = """<!doctype html><script src="/static/redmessenger.js"></script><script>
// A stand-in for socket.io-client's io(): records what the client emits, and lets the test
// play the server's part.
window.fakeIo = function (url, options) {
  var handlers = {};
  var socket = {
    url: url, options: options, sent: [], acks: [], connected: true, active: true, closed: false,
    on: function (name, fn) { handlers[name] = fn; return socket; },
    timeout: function () { return socket; },
    emit: function (name, data, callback) {
      socket.sent.push([name, data]);
      var uid = typeof data === "string" ? data.split(":")[0] : data.uid;
      if (callback) callback(null, { ok: true, uid: uid });
    },
    disconnect: function () { socket.closed = true; socket.active = false; },
    fire: function (name) { handlers[name].apply(null, Array.prototype.slice.call(arguments, 1)); }
  };
  window.socket = socket;
  return socket;
};
window.io = window.fakeIo;
</script>"""


def test_library_api_with_a_stand_in_socket(new_page, demo_server):
    page = new_page(wait_identified=False)
    url = demo_server.url + "/harness.html"
    serve(page, url, LIBRARY_HARNESS)
    page.goto(url)
    result = page.evaluate("""() => {
      var events = [], got = [];
      var rm = new RedMessenger("http://example.test/rm", { uid: "kim", key: "k", ack: true, io: fakeIo });
      ["connected", "identified", "error", "disconnected"].forEach(function (name) {
        rm.on(name, function (detail) { events.push([name, detail && (detail.code || detail.uid)]); });
      });
      rm.onMessage = function (message) { got.push(message.id); };
      socket.fire("connect");
      var first = { id: "m1", source: "rm.users.kim", timestamp: 1, bubble: false, payload: "a" };
      socket.fire("message", first, function () { socket.acks.push("m1"); });
      socket.fire("message", first, function () { socket.acks.push("m1 again"); });
      socket.fire("message", Object.assign({}, first, { id: "m2" }), function () { socket.acks.push("m2"); });
      socket.fire("connect");  // a reconnect identifies again
      socket.fire("rm_error", { error: "unauthorized" });
      return { events: events, got: got, sent: socket.sent, acks: socket.acks, closed: socket.closed,
               state: rm.state, url: socket.url };
    }""")
    assert result["url"] == "http://example.test/rm"
    assert result["sent"] == [["identifier", {"uid": "kim", "key": "k", "ack": True}]] * 2
    assert result["got"] == ["m1", "m2"], "the duplicate is dropped"
    assert result["acks"] == ["m1", "m1 again", "m2"], "and still acknowledged"
    assert result["events"] == [
        ["connected", None], ["identified", "kim"], ["connected", None], ["identified", "kim"],
        ["error", "unauthorized"],
    ]
    assert result["closed"] is True and result["state"] == "closed", "no retrying a refused key"

    seed_form = page.evaluate("""() => {
      var rm = new RedMessenger("http://example.test/rm", "lee", "k2");
      return [rm.uid, rm.key, rm.ack];
    }""")
    assert seed_form == ["lee", "k2", "batch"]
    plain = page.evaluate("""() => {
      new RedMessenger("http://example.test/rm", { uid: "lee", key: "k2", ack: false, io: fakeIo });
      socket.fire("connect");
      socket.fire("message", { id: "x", source: "s", timestamp: 1, bubble: false, payload: "p" });
      return socket.sent;
    }""")
    assert plain == [["identifier", "lee:k2"]], "ack: false speaks the seed's protocol"
    errors = page.evaluate("""() => {
      try { new RedMessenger("http://example.test/rm", {}); } catch (e) { return e.message; }
    }""")
    assert re.search(r"uid is required", errors)


def test_batch_acks_by_default_with_a_stand_in_socket(new_page, demo_server):
    """Messages come without an ack id; the ids go back in `ack` events, at 100 ids at once
    or 50 ms after the first, duplicates included; what a disconnect cut is not sent."""
    page = new_page(wait_identified=False)
    url = demo_server.url + "/harness.html"
    serve(page, url, LIBRARY_HARNESS)
    page.goto(url)
    page.evaluate("""() => {
      window.rm = new RedMessenger("http://example.test/rm", { uid: "kim", io: fakeIo });
      window.got = [];
      rm.onMessage = function (message) { got.push(message.id); };
      socket.fire("connect");
      var fire = function (id) {
        socket.fire("message", { id: id, source: "rm.users.kim", timestamp: 1, bubble: false, payload: "" });
      };
      for (var i = 0; i < 100; i++) fire("a" + i);
      window.afterHundred = socket.sent.length;
      fire("b0"); fire("b0"); fire("b1");
    }""")
    page.wait_for_function("socket.sent.length === 3", timeout=5_000)
    result = page.evaluate("""() => {
      socket.fire("message", { id: "c0", source: "rm.users.kim", timestamp: 1, bubble: false, payload: "" });
      socket.fire("disconnect", "transport close");
      socket.fire("connect");  // back: it identifies again, and acknowledges what comes now
      socket.fire("message", { id: "d0", source: "rm.users.kim", timestamp: 1, bubble: false, payload: "" });
    }""")
    page.wait_for_function("socket.sent.length === 5", timeout=5_000)
    result = page.evaluate("() => ({ sent: socket.sent, afterHundred: afterHundred, got: got })")
    assert result["sent"][0] == ["identifier", {"uid": "kim", "ack": "batch"}]
    assert result["afterHundred"] == 2, "100 ids go at once"
    assert result["sent"][1] == ["ack", [f"a{i}" for i in range(100)]]
    assert result["sent"][2] == ["ack", ["b0", "b0", "b1"]], "a duplicate is acknowledged again"
    assert result["got"][-4:] == ["b0", "b1", "c0", "d0"], "but passed on once"
    assert result["sent"][3:] == [["identifier", {"uid": "kim", "ack": "batch"}], ["ack", ["d0"]]], \
        "an ack cut by the disconnect is not sent"
    bad = page.evaluate("""() => {
      try { new RedMessenger("http://example.test/rm", { uid: "x", ack: "yes" }); }
      catch (e) { return e.message; }
    }""")
    assert "options.ack" in bad


def test_falls_back_to_long_polling_when_websockets_are_refused(new_page, demo_server, r):
    page = new_page(wait_identified=False)
    url = demo_server.url + "/?uid=lena"

    def no_websockets(route):
        # The page's own policy, minus ws: the browser refuses to open any WebSocket.
        response = route.fetch()
        headers = {**response.headers, "content-security-policy": response.headers[
            "content-security-policy"].replace("connect-src 'self'", f"connect-src {demo_server.url}")}
        route.fulfill(response=response, headers=headers)

    page.route(url, no_websockets)
    page.goto(url)
    expect(page.locator("#status")).to_have_text("Online as lena")
    r.publish("rm.users.lena", "over long polling")
    expect(received(page).locator(".text")).to_have_text(["over long polling"])
    polled = "performance.getEntriesByType('resource').some(e => /transport=polling/.test(e.name))"
    assert page.evaluate(polled)
