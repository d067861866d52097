/*!
 * redmessenger.js: the browser client of RedMessenger.
 *
 * RedMessenger delivers what your app PUBLISHes to Redis (`rm.users.$uid`,
 * `rm.channels.$cid`) to the user's open tabs, and keeps it in Redis while the user is
 * away. This file is the client side: it needs socket.io-client 4.x (the global `io`)
 * and nothing else.
 *
 *   new RedMessenger(url, options)       url: the server and namespace, "http://host:8080/rm"
 *   new RedMessenger(url, uid, key)      the original example's form; same as {uid, key}
 *
 * Options (all but uid optional):
 *   uid            the user to receive messages for
 *   key            the user's key (secure mode: must equal Redis `rm:users:$uid:key`)
 *   token          a signed token (JWT) for uid from your app, instead of a key
 *   getToken       function (uid) returning a token, or a Promise of one: called before
 *                  every identify (the first and each reconnect), so that a tab open for
 *                  longer than a token lives never presents an expired one
 *   ack            "batch" (default): acknowledge what this tab has, a list of ids at a
 *                  time (every 50 ms or 100 messages), so the server counts a message as
 *                  delivered only once this tab has it; true: the same, one ack per
 *                  message (costs the server more); false: the seed's plain protocol
 *   notifications  true (default): show a desktop Notification for messages whose
 *                  `bubble` is true (only one tab of the user gets that), if the user allowed
 *   autoConnect    true (default): connect now; otherwise call connect()
 *   retry          {min, max} in ms (default {min: 1000, max: 30000}): the backoff after a
 *                  temporary refusal doubles from min up to max, with jitter
 *   io             the socket.io-client `io` function (default: the global `io`)
 *   socket         extra options for io() (default: WebSocket, falling back to long polling)
 *
 * Messages are envelopes {id, source, timestamp, bubble, payload} (plus
 * `encoding: "base64"` for data that was not UTF-8). Override `onMessage(message)` or
 * listen to "message". A message seen before (same `id`, e.g. re-sent after a reconnect)
 * is acknowledged again but not passed on twice.
 *
 * Refusals: `invalid_identifier` and `unauthorized` are final (the client stops; fix the
 * uid or the credentials and call connect()). Every other one is temporary
 * (`unavailable`, `conn_limit`, `identify_timeout`, and `rate_limited`, retried only
 * once its minute is over): the client closes the socket, waits (backoff with jitter)
 * and connects and identifies again by itself, until it is served. While the server
 * cannot be reached at all, socket.io-client keeps trying by itself.
 *
 * Events, with rm.on(name, fn) / rm.off(name, fn):
 *   "connected"     ()                     the socket is open; identifying follows
 *   "identified"    ({uid, at})            the server accepted the uid; `at` is Date.now()
 *                                          when the identifier was sent
 *   "message"       (message)              after onMessage
 *   "error"         ({code, message})      code is the server's `rm_error` code
 *                                          (invalid_identifier, unauthorized, conn_limit,
 *                                          unavailable, rate_limited, identify_timeout),
 *                                          "connect_error" (the server cannot be reached)
 *                                          or "token_error" (getToken failed)
 *   "retrying"      ({code, delay, attempt})  a temporary refusal: connecting again in
 *                                          `delay` ms (the `attempt`th retry in a row)
 *   "disconnected"  ({reason, willRetry})  the socket closed; willRetry is false after
 *                                          close(), a final refusal, or the server closing
 *                                          this socket on purpose (e.g. more tabs than
 *                                          user_conn_limit)
 * Also: rm.state ("connecting", "connected", "identified", "waiting" (the server cannot
 * be reached; socket.io retries), "retrying" (waiting out a backoff), "disconnected",
 * "closed"), rm.connect(), rm.close(), rm.notify(message) (override to change the
 * notification), RedMessenger.requestNotifications() (call it from a click; returns a
 * Promise), RedMessenger.describe(code) (a sentence for an error code).
 *
 * Example: save these lines as an .html file, open it in a browser while `make run`
 * serves on port 8080, then run the redis-cli line below:
 *
 *   <pre id="log"></pre>
 *   <script src="http://127.0.0.1:8080/vendor/socket.io.min.js"></script>
 *   <script src="http://127.0.0.1:8080/static/redmessenger.js"></script>
 *   <script>
 *     var rm = new RedMessenger("http://127.0.0.1:8080/rm", { uid: "user1" });
 *     rm.onMessage = function (message) {
 *       document.getElementById("log").textContent += message.source + ": " + message.payload + "\n";
 *     };
 *     rm.on("error", function (error) { console.warn("RedMessenger:", error.code, error.message); });
 *   </script>
 *
 * then, in a shell:  redis-cli PUBLISH rm.users.user1 "Hello, world!"
 */
(function (root, factory) {
  "use strict";
  var RedMessenger = factory();
  if (typeof module === "object" && module.exports) {
    module.exports = RedMessenger;
  } else {
    root.RedMessenger = RedMessenger;
  }
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";

  // Codes after which trying again with the same uid and credentials cannot help.
  var FINAL_ERRORS = ["invalid_identifier", "unauthorized"];
  // How many message ids we remember to drop duplicates; older ones are forgotten.
  var SEEN_LIMIT = 5000;
  var IDENTIFY_TIMEOUT_MS = 10000;
  // Batch acks (SPEC §4): the ids handled go in one `ack` event at most this often, or
  // as soon as this many are waiting.
  var BATCH_ACK_MS = 50;
  var BATCH_ACK_IDS = 100;
  // The server counts failed identifies in windows of a minute: asking again sooner is
  // refused again, and would only be counted against this uid and address.
  var RATE_LIMIT_MS = 60000;

  function RedMessenger(url, options, key) {
    if (!(this instanceof RedMessenger)) {
      return new RedMessenger(url, options, key);
    }
    if (typeof options === "string") {
      options = { uid: options, key: key };
    }
    options = options || {};
    if (!url || typeof url !== "string") {
      throw new TypeError("RedMessenger: url is required, e.g. \"http://127.0.0.1:8080/rm\"");
    }
    if (!options.uid || typeof options.uid !== "string") {
      throw new TypeError("RedMessenger: options.uid is required");
    }
    if (options.ack !== undefined && [true, false, "batch"].indexOf(options.ack) < 0) {
      throw new TypeError("RedMessenger: options.ack must be \"batch\", true or false");
    }
    if (options.getToken !== undefined && typeof options.getToken !== "function") {
      throw new TypeError("RedMessenger: options.getToken must be a function");
    }
    var retry = options.retry || {};
    this.url = url;
    this.uid = options.uid;
    this.key = options.key || "";
    this.token = options.token || "";
    this.getToken = options.getToken || null;
    this.ack = options.ack === undefined ? "batch" : options.ack;
    this.notifications = options.notifications !== false;
    this.retryMin = retry.min > 0 ? retry.min : 1000;
    this.retryMax = retry.max >= this.retryMin ? retry.max : Math.max(30000, this.retryMin);
    this.state = "closed";
    this.socket = null;
    this._io = options.io || (typeof io !== "undefined" ? io : null);
    this._socketOptions = options.socket || {};
    this._listeners = {};
    this._seen = new Set();
    this._seenOrder = [];
    this._refused = null;
    this._retries = 0; // temporary refusals in a row, for the backoff
    this._retryTimer = null;
    this._connection = 0; // counts connects, so that a late reply to an old one is ignored
    this._acks = []; // batch mode: ids handled and not acknowledged yet
    this._ackTimer = null;
    if (options.autoConnect !== false) {
      this.connect();
    }
  }

  /** Print each message; replace this (or listen to "message") to do something useful. */
  RedMessenger.prototype.onMessage = function (message) {
    console.log("Message from " + message.source + ": " + message.payload);
  };

  RedMessenger.prototype.on = function (name, fn) {
    (this._listeners[name] = this._listeners[name] || []).push(fn);
    return this;
  };

  RedMessenger.prototype.off = function (name, fn) {
    var list = this._listeners[name] || [];
    var i = list.indexOf(fn);
    if (i >= 0) list.splice(i, 1);
    return this;
  };

  RedMessenger.prototype._emit = function (name, detail) {
    var list = (this._listeners[name] || []).slice();
    for (var i = 0; i < list.length; i++) {
      try {
        list[i].call(this, detail);
      } catch (err) {
        console.error("RedMessenger: a \"" + name + "\" listener failed", err);
      }
    }
  };

  /** The identifier the server expects: an object in ack mode or with a token, "uid:key"
   *  as in the seed otherwise. `token` defaults to the `token` option. */
  RedMessenger.prototype.generateIdentifier = function (token) {
    token = token || this.token;
    if (!this.ack && !token) {
      return this.key ? this.uid + ":" + this.key : this.uid;
    }
    var identifier = { uid: this.uid };
    if (this.ack) identifier.ack = this.ack;
    if (token) {
      identifier.token = token;
    } else if (this.key) {
      identifier.key = this.key;
    }
    return identifier;
  };

  /** Open the socket; it reconnects by itself and identifies again each time. */
  RedMessenger.prototype.connect = function () {
    this._cancelRetry();
    if (this.socket) {
      this._refused = null;
      this.state = "connecting";
      this.socket.connect();
      return this;
    }
    if (!this._io) {
      throw new Error("RedMessenger: socket.io-client is not loaded (no global io)");
    }
    var self = this;
    // WebSocket first (one connection, and what several server processes need), long
    // polling only if a proxy in the way refuses WebSockets.
    var socket = this._io(this.url, Object.assign(
      { transports: ["websocket", "polling"], tryAllTransports: true }, this._socketOptions));
    this.socket = socket;
    this.state = "connecting";

    socket.on("connect", function () {
      self._connection += 1;
      self.state = "connected";
      self._refused = null;
      self._emit("connected");
      self._identify();
    });
    socket.on("message", function (message, ack) {
      self._receive(message, ack);
    });
    socket.on("rm_error", function (data) {
      var code = (data && data.error) || "unknown";
      self._refuse(code);
    });
    socket.on("connect_error", function (err) {
      // socket.io-client tries again by itself, with its own backoff.
      if (self._retryTimer === null && self.state !== "closed") self.state = "waiting";
      self._emit("error", { code: "connect_error", message: String((err && err.message) || err) });
    });
    socket.on("disconnect", function (reason) {
      // socket.io retries by itself, except after close(), a refusal, or the server
      // closing this socket on purpose (e.g. more tabs than user_conn_limit); after a
      // temporary refusal we retry ourselves, once the backoff is over.
      // Acks not sent yet are moot: the server gives those messages back and sends them
      // again, and then they are acknowledged (and not passed on twice).
      self._dropAcks();
      var retrying = self._retryTimer !== null;
      var willRetry = retrying || socket.active;
      if (!retrying) self.state = willRetry ? "disconnected" : "closed";
      self._emit("disconnected", { reason: reason, willRetry: willRetry });
    });
    return this;
  };

  /** Close the socket for good (call connect() to open it again). */
  RedMessenger.prototype.close = function () {
    this._cancelRetry();
    this.state = "closed";
    if (this.socket) this.socket.disconnect();
    return this;
  };

  RedMessenger.prototype._identify = function () {
    var self = this;
    var connection = this._connection;
    var current = function () {
      return connection === self._connection && self.socket.connected;
    };
    var token;
    if (!this.getToken) {
      this._sendIdentifier(null, current);
      return;
    }
    try {
      token = this.getToken(this.uid);
    } catch (err) {
      this._tokenFailed(err);
      return;
    }
    if (token && typeof token.then === "function") {
      token.then(function (value) {
        if (current()) self._sendIdentifier(value, current);
      }, function (err) {
        if (current()) self._tokenFailed(err);
      });
    } else {
      this._sendIdentifier(token, current);
    }
  };

  RedMessenger.prototype._sendIdentifier = function (token, current) {
    var self = this;
    if (this.getToken && (!token || typeof token !== "string")) {
      this._tokenFailed(new Error("getToken gave " + (token === "" ? "an empty string" : typeof token)));
      return;
    }
    var at = Date.now();
    this.socket.timeout(IDENTIFY_TIMEOUT_MS).emit("identifier", this.generateIdentifier(token), function (err, reply) {
      if (!current()) return;
      if (err) {
        self._refuse("identify_timeout");
      } else if (reply && reply.ok) {
        self._retries = 0;
        self.state = "identified";
        self._emit("identified", { uid: reply.uid, at: at });
      } else {
        self._refuse((reply && reply.error) || "unknown");
      }
    });
  };

  RedMessenger.prototype._tokenFailed = function (err) {
    this._emit("error", { code: "token_error", message: "getToken failed: " + String((err && err.message) || err) });
    this._retryLater("token_error");
  };

  RedMessenger.prototype._refuse = function (code) {
    if (this._refused === code) return; // rm_error and the identify reply say it both
    this._refused = code;
    var final = FINAL_ERRORS.indexOf(code) >= 0;
    if (final) this.state = "closed";
    this._emit("error", { code: code, message: RedMessenger.describe(code) });
    if (!final) {
      this._retryLater(code);
    } else if (this.socket) {
      // The server closes the socket; stop socket.io from retrying what cannot succeed.
      this.socket.disconnect();
    }
  };

  /** How long to wait before the next try: doubling from retryMin to retryMax, then a
   *  random point in its upper half, so that the tabs a restart refused all at once do
   *  not all come back at once. */
  RedMessenger.prototype._backoff = function (code) {
    var ceiling = Math.min(this.retryMax, this.retryMin * Math.pow(2, this._retries));
    var delay = ceiling / 2 + Math.random() * ceiling / 2;
    if (code === "rate_limited") delay = RATE_LIMIT_MS + Math.random() * this.retryMin;
    return Math.round(delay);
  };

  /** A temporary refusal: close this connection, and open a new one after the backoff. */
  RedMessenger.prototype._retryLater = function (code) {
    if (this._retryTimer !== null || this.state === "closed") return;
    var self = this;
    var delay = this._backoff(code);
    this._retries += 1;
    this.state = "retrying";
    this._retryTimer = setTimeout(function () {
      self._retryTimer = null;
      self._refused = null;
      self.state = "connecting";
      self.socket.connect();
    }, delay);
    // Our side closes at once, so that socket.io does not reconnect on its own first.
    if (this.socket) this.socket.disconnect();
    this._emit("retrying", { code: code, delay: delay, attempt: this._retries });
  };

  RedMessenger.prototype._cancelRetry = function () {
    if (this._retryTimer !== null) {
      clearTimeout(this._retryTimer);
      this._retryTimer = null;
    }
  };

  RedMessenger.prototype._receive = function (message, ack) {
    try {
      if (!message || typeof message !== "object") return;
      if (message.id !== undefined && this._seen.has(message.id)) return;
      if (message.id !== undefined) this._remember(message.id);
      try {
        this.onMessage(message);
      } catch (err) {
        console.error("RedMessenger: onMessage failed", err);
      }
      this._emit("message", message);
      if (message.bubble && this.notifications) this.notify(message);
    } finally {
      // Acknowledge even a duplicate or a message our handler choked on: the server
      // should not send it again, and will not hold this tab's next messages back.
      if (typeof ack === "function") {
        ack(true);
      } else if (this.ack === "batch" && message && message.id !== undefined) {
        this._batchAck(message.id);
      }
    }
  };

  RedMessenger.prototype._batchAck = function (id) {
    var self = this;
    this._acks.push(id);
    if (this._acks.length >= BATCH_ACK_IDS) {
      this._sendAcks();
    } else if (this._ackTimer === null) {
      this._ackTimer = setTimeout(function () { self._sendAcks(); }, BATCH_ACK_MS);
    }
  };

  RedMessenger.prototype._sendAcks = function () {
    var ids = this._acks;
    this._dropAcks();
    if (ids.length && this.socket && this.socket.connected) this.socket.emit("ack", ids);
  };

  RedMessenger.prototype._dropAcks = function () {
    if (this._ackTimer !== null) {
      clearTimeout(this._ackTimer);
      this._ackTimer = null;
    }
    this._acks = [];
  };

  RedMessenger.prototype._remember = function (id) {
    this._seen.add(id);
    this._seenOrder.push(id);
    if (this._seenOrder.length > SEEN_LIMIT) {
      this._seen.delete(this._seenOrder.shift());
    }
  };

  /** Show a desktop notification for `message`, if the user allowed them. */
  RedMessenger.prototype.notify = function (message) {
    if (typeof Notification === "undefined" || Notification.permission !== "granted") return null;
    var body = message.encoding === "base64" ? "(binary data)" : String(message.payload);
    try {
      return new Notification("Message from " + message.source, { body: body.slice(0, 200), tag: message.id });
    } catch (err) {
      return null; // e.g. Chrome on Android only allows notifications from a service worker
    }
  };

  /** Ask the user to allow desktop notifications; resolves to "granted", "denied", ... */
  RedMessenger.requestNotifications = function () {
    if (typeof Notification === "undefined") return Promise.resolve("unsupported");
    return Promise.resolve(Notification.requestPermission());
  };

  /** A sentence for each error code. */
  RedMessenger.describe = function (code) {
    return {
      invalid_identifier: "The user id is not valid (1-256 characters, no ':', no spaces).",
      unauthorized: "Wrong, missing or expired key or token for this user.",
      conn_limit: "The server is full.",
      unavailable: "The server cannot reach Redis.",
      rate_limited: "Too many failed sign-ins for this user or address; waiting a minute.",
      identify_timeout: "The server did not answer our identifier in time.",
      token_error: "Could not get a token for this user.",
      connect_error: "Cannot reach the server."
    }[code] || "Error: " + code;
  };

  return RedMessenger;
});
