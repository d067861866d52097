// The demo chat page: signs in through redmessenger.js, shows what arrives, and sends
// through the demo-only endpoints (/demo/...), which PUBLISH to Redis as an app would.
(function () {
  "use strict";

  var body = document.body;
  var config = {
    route: body.dataset.rmRoute,
    secure: body.dataset.secure === "true",
    demo: body.dataset.demo === "true",
    tokens: body.dataset.tokens === "true",
    maxPayload: Number(body.dataset.maxPayload)
  };
  var $ = function (id) { return document.getElementById(id); };

  // Server time minus our time, so that a message's `timestamp` (the server's clock) can be
  // set beside the moment we identified (our clock). The server wrote its time into the
  // page just before sending it; our clock read when the response started is the match.
  var clockOffset = (function () {
    var nav = performance.getEntriesByType && performance.getEntriesByType("navigation")[0];
    var ours = nav && nav.responseStart ? performance.timeOrigin + nav.responseStart : Date.now();
    return Number(body.dataset.serverTime) - ours;
  })();

  var me = null;
  var rm = null;
  var identifiedAt = Infinity; // server clock; messages older than this come from the queue

  ///// Signing in /////

  function keyStore(uid) { return "rm-demo-key:" + uid; }

  function start() {
    var params = new URLSearchParams(location.search);
    var uid = params.get("uid");
    if (params.has("key")) {
      // Keep the key for this tab only, and out of the address bar and history.
      sessionStorage.setItem(keyStore(uid || ""), params.get("key"));
      params.delete("key");
      history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params : ""));
    }
    $("signin-form").addEventListener("submit", function (event) {
      event.preventDefault();
      var form = event.target;
      var key = form.elements.key ? form.elements.key.value : "";
      var id = form.elements.uid.value.trim();
      if (key) sessionStorage.setItem(keyStore(id), key);
      location.assign("/?uid=" + encodeURIComponent(id));
    });
    if (uid) {
      signIn(uid, sessionStorage.getItem(keyStore(uid)) || "", Number(params.get("ttl")) || null);
    } else {
      $("signin").hidden = false;
      $("signin-uid").focus();
    }
  }

  function signIn(uid, key, tokenTtl) {
    me = uid;
    document.title = uid + " · RedMessenger demo";
    $("signin").hidden = true;
    $("app").hidden = false;
    $("me").textContent = uid;
    $("second-tab").href = "/?uid=" + encodeURIComponent(uid);
    var peer = uid === "bob" ? "alice" : "bob";
    $("peer-link").href = "/?uid=" + peer;
    $("peer-link").textContent = peer;
    $("cli-hint").textContent = "redis-cli PUBLISH rm.users." + uid + " \"Hello, world!\"";
    $("signout").addEventListener("click", function () {
      if (rm) rm.close();
      sessionStorage.removeItem(keyStore(uid));
      location.assign("/");
    });
    setupNotifications();
    if (config.demo) {
      setupSending();
      setupGroups();
    }

    if (typeof io === "undefined") {
      // socket.io-client did not load (not installed on the server, or blocked): say so
      // rather than wait forever on "Connecting…".
      $("status").dataset.state = "error";
      $("status").textContent = "Cannot connect: socket.io-client did not load (/vendor/socket.io.min.js)";
      return;
    }
    var options = { uid: uid, key: key };
    if (config.tokens) {
      // Token mode: /demo/token plays the app's login view, which signs a short-lived
      // token for the user; the client asks for a fresh one before every identify.
      options.getToken = function () {
        return post("/demo/token", tokenTtl ? { uid: uid, ttl: tokenTtl } : { uid: uid })
          .then(function (reply) { return reply.token; });
      };
    }
    rm = new RedMessenger(location.origin + config.route, options);
    rm.onMessage = showMessage;
    rm.on("connected", function () { setStatus("connected", "Connected, identifying…"); });
    rm.on("identified", function (info) {
      identifiedAt = info.at + clockOffset;
      setStatus("identified", "Online as " + info.uid);
    });
    rm.on("disconnected", function (info) {
      if (rm.state === "retrying") return; // the "retrying" event says when
      if (rm.state === "closed" && status().dataset.state === "error") return;
      setStatus("offline", info.willRetry ? "Offline, reconnecting…"
        : "Disconnected by the server (too many tabs for this user?). Reload to reconnect.");
    });
    rm.on("error", function (error) {
      if (error.code === "connect_error") {
        setStatus("waiting", "Waiting for the server…");
      } else if (rm.state === "closed") { // a final refusal
        setStatus("error", error.message + " (" + error.code + ")");
      }
    });
    rm.on("retrying", function (retry) {
      stopCountdown();
      var until = Date.now() + retry.delay;
      var text = RedMessenger.describe(retry.code) + " Retrying in ";
      var show = function () {
        var seconds = Math.max(1, Math.ceil((until - Date.now()) / 1000));
        setStatus("retrying", text + seconds + " s (" + retry.code + ")");
      };
      show();
      countdown = setInterval(function () {
        if (rm.state !== "retrying") return stopCountdown();
        show();
      }, 1000);
    });
  }

  var countdown = null;

  function stopCountdown() {
    if (countdown !== null) clearInterval(countdown);
    countdown = null;
  }

  function status() { return $("status"); }

  function setStatus(state, text) {
    if (state !== "retrying") stopCountdown();
    status().dataset.state = state;
    status().textContent = text;
  }

  ///// Receiving /////

  // What the page shows of a payload: the demo sends {"from", "text"} as JSON; anything
  // else (an app's plain text, other JSON, binary) is shown as it is.
  function readPayload(message) {
    if (message.encoding === "base64") {
      return { from: null, text: "(binary data, base64) " + message.payload };
    }
    var text = String(message.payload);
    try {
      var data = JSON.parse(text);
      if (data && typeof data === "object" && typeof data.text === "string") {
        return { from: typeof data.from === "string" ? data.from : null, text: data.text };
      }
    } catch (err) { /* not JSON: plain text */ }
    return { from: null, text: text };
  }

  function describeSource(source) {
    var m = /^rm\.(users|channels|groups)\.(.*)$/.exec(source || "");
    if (!m) return source;
    return m[1] === "users" ? (m[2] === me ? "you" : m[2]) : "#" + m[2];
  }

  function showMessage(message) {
    var item = $("message-template").content.firstElementChild.cloneNode(true);
    var payload = readPayload(message);
    var queued = typeof message.timestamp === "number" && message.timestamp < identifiedAt;
    item.dataset.id = message.id;
    item.dataset.source = message.source;
    item.dataset.bubble = String(Boolean(message.bubble));
    item.dataset.queued = String(queued);
    item.querySelector(".who").textContent =
      (payload.from || "an app") + " → " + describeSource(message.source);
    var time = item.querySelector("time");
    var when = new Date(message.timestamp);
    time.dateTime = when.toISOString();
    time.textContent = when.toLocaleTimeString();
    item.querySelector(".queued").hidden = !queued;
    item.querySelector(".bubble").hidden = !message.bubble;
    item.querySelector(".quiet").hidden = Boolean(message.bubble);
    item.querySelector(".text").textContent = payload.text;
    item.querySelector("pre").textContent = JSON.stringify(message, null, 2);
    append(item);
    // Ready to reply: a direct message fills in who to answer, unless a recipient is set.
    var recipient = $("send-id");
    if (recipient && !recipient.value && payload.from && payload.from !== me && item.dataset.source.indexOf("rm.users.") === 0) {
      recipient.value = payload.from;
    }
    $("tab-role").textContent = message.bubble
      ? "This is " + me + "'s notifying tab (the oldest open one): its messages carry bubble: true."
      : "An older tab of " + me + " shows the notifications: messages here carry bubble: false.";
  }

  function append(item) {
    var list = $("messages");
    var atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.appendChild(item);
    $("empty").hidden = true;
    if (atBottom || item.classList.contains("out")) list.scrollTop = list.scrollHeight;
  }

  ///// Notifications /////

  function setupNotifications() {
    var button = $("notify-btn");
    var state = $("notify-state");
    function show() {
      if (typeof Notification === "undefined") {
        button.hidden = true;
        state.textContent = "This browser has no desktop notifications.";
        return;
      }
      var permission = Notification.permission;
      button.hidden = permission !== "default";
      state.textContent = permission === "granted" ? "Desktop notifications are on."
        : permission === "denied" ? "Desktop notifications are blocked for this site." : "";
    }
    button.addEventListener("click", function () {
      RedMessenger.requestNotifications().then(show);
    });
    show();
  }

  ///// Sending (demo only) /////

  function post(url, data) {
    return fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(data)
    }).then(readReply);
  }

  function readReply(response) {
    return response.json().catch(function () { return {}; }).then(function (data) {
      if (!response.ok) throw new Error(data.message || "HTTP " + response.status);
      return data;
    });
  }

  function setupSending() {
    var form = $("send-form");
    var result = $("send-result");
    form.addEventListener("change", function () {
      var group = form.elements.to.value === "group";
      $("send-id-label").textContent = group ? "Group id" : "User id";
      $("send-id").placeholder = group ? "cats" : "bob";
    });
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var to = form.elements.to.value;
      var id = form.elements.id.value.trim();
      var text = form.elements.text.value;
      var payload = JSON.stringify({ from: me, text: text });
      if (new TextEncoder().encode(payload).length > config.maxPayload) {
        return report(result, "That message is too long for the demo.", true);
      }
      var button = form.querySelector("button[type=submit]");
      button.disabled = true;
      var via = form.elements.inbox.checked ? "inbox" : "publish";
      post("/demo/publish", { to: to, id: id, payload: payload, via: via }).then(function (reply) {
        showSent(to, id, text, reply);
        form.elements.text.value = "";
        form.elements.text.focus();
        if (reply.via === "inbox") {
          report(result, "Added to the inbox for " + reply.channel + " (id " + reply.id + ").", false);
        } else {
          report(result, reply.receivers > 0
            ? "Published to " + reply.channel + "."
            : "Published to " + reply.channel + ", but no RedMessenger server was subscribed: it is lost.",
            reply.receivers === 0);
        }
        if (to === "group") setTimeout(refreshGroups, 500);
      }).catch(function (err) {
        report(result, "Not sent: " + err.message, true);
      }).then(function () { button.disabled = false; });
    });
  }

  function showSent(to, id, text, reply) {
    var item = document.createElement("li");
    item.className = "msg out";
    var meta = document.createElement("div");
    meta.className = "meta";
    var who = document.createElement("span");
    who.className = "who";
    who.textContent = "you → " + (to === "group" ? "#" + id : id);
    var note = document.createElement("span");
    note.className = "note";
    note.textContent = "PUBLISH " + reply.channel;
    meta.append(who, note);
    var p = document.createElement("p");
    p.className = "text";
    p.textContent = text;
    item.append(meta, p);
    append(item);
  }

  function report(element, text, isError) {
    element.textContent = text;
    element.classList.toggle("error", Boolean(isError));
  }

  ///// Groups (demo only) /////

  var groups = [];

  function groupsStore() { return "rm-demo-groups:" + me; }

  function saveGroups() { localStorage.setItem(groupsStore(), JSON.stringify(groups)); }

  function membersUrl(cid) { return "/demo/groups/" + encodeURIComponent(cid) + "/members"; }

  function setupGroups() {
    try {
      groups = JSON.parse(localStorage.getItem(groupsStore())) || [];
    } catch (err) {
      groups = [];
    }
    $("group-form").addEventListener("submit", function (event) {
      event.preventDefault();
      var input = $("group-id");
      var cid = input.value.trim();
      post(membersUrl(cid), { uid: me, action: "join" }).then(function (reply) {
        if (groups.indexOf(cid) < 0) groups.push(cid);
        saveGroups();
        input.value = "";
        report($("group-result"), "Joined #" + cid + ": messages to it now reach you.");
        renderGroup(cid, reply.members);
      }).catch(function (err) { report($("group-result"), "Could not join: " + err.message, true); });
    });
    window.addEventListener("focus", refreshGroups);
    refreshGroups();
  }

  function refreshGroups() {
    groups.forEach(function (cid) {
      fetch(membersUrl(cid)).then(readReply).then(function (reply) {
        if (reply.members.some(function (m) { return m.uid === me; })) {
          renderGroup(cid, reply.members);
        } else { // left from another tab
          groups = groups.filter(function (g) { return g !== cid; });
          saveGroups();
          var stale = document.querySelector('#groups li[data-group="' + CSS.escape(cid) + '"]');
          if (stale) stale.remove();
        }
      }).catch(function () { /* shown stale until the next refresh */ });
    });
  }

  function renderGroup(cid, members) {
    var list = $("groups");
    var item = Array.prototype.find.call(list.children, function (li) { return li.dataset.group === cid; });
    if (!item) {
      item = document.createElement("li");
      item.dataset.group = cid;
      list.appendChild(item);
    }
    item.textContent = "";
    var name = document.createElement("strong");
    name.textContent = "#" + cid;
    var people = document.createElement("span");
    people.className = "members";
    people.textContent = members.map(function (m) {
      return (m.uid === me ? m.uid + " (you)" : m.uid) + (m.queued ? " · " + m.queued + " waiting" : "");
    }).join(", ");
    var leave = document.createElement("button");
    leave.type = "button";
    leave.className = "secondary small";
    leave.textContent = "Leave";
    leave.setAttribute("aria-label", "Leave #" + cid);
    leave.addEventListener("click", function () {
      post(membersUrl(cid), { uid: me, action: "leave" }).then(function () {
        groups = groups.filter(function (g) { return g !== cid; });
        saveGroups();
        item.remove();
        report($("group-result"), "Left #" + cid + ".");
      }).catch(function (err) { report($("group-result"), "Could not leave: " + err.message, true); });
    });
    item.append(name, people, leave);
  }

  start();
})();
