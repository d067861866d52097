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
 *   key            the user's token (secure mode: must equal Redis `rm:users:$uid:key`)
 *   ack            true (default): acknowledge each message, so the server counts it as
 *                  delivered only once this tab has it; false: the seed's plain protocol
 *   notifications  true (default): show a desktop Notification for messages whose
 *                  `bubble` is true (only one tab of the user gets that), if the user allowed
 *   autoConnect    true (default): connect now; otherwise call connect()
 *   io             the socket.io-client `io` function (default: the global `io`)
 *   socket         extra options for io() (default: WebSocket, falling back to long polling)
 *
 * Messages are envelopes {id, source, timestamp, bubble, payload} (plus
 * `encoding: "base64"` for data that was not UTF-8). Override `onMessage(message)` or
 * listen to "message". A message seen before (same `id`, e.g. re-sent after a reconnect)
 * is acknowledged again but not passed on twice.
 *
 * Events, with rm.on(name, fn) / rm.off(name, fn):
 *   "connected"     ()                     the socket is open; identifying follows
 *   "identified"    ({uid, at})            the server accepted the uid; `at` is Date.now()
 *                                          when the identifier was sent
 *   "message"       (message)              after onMessage
 *   "error"         ({code, message})      code is the server's `rm_error` code
 *                                          (invalid_identifier, unauthorized, conn_limit,
 *                                          unavailable, identify_timeout) or "connect_error"
 *   "disconnected"  ({reason, willRetry})  the socket closed; socket.io retries by itself
 *                                          unless the server refused this uid for good
 * Also: rm.state ("connecting", "connected", "identified", "disconnected", "closed"),
 * rm.connect(), rm.close(), rm.notify(message) (override to change the notification),
 * RedMessenger.requestNotifications() (call it from a click; returns a Promise).
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

  // Codes after which trying again with the same uid and key cannot help.
  var FINAL_ERRORS = ["invalid_identifier", "unauthorized"];
  // How many message ids we remember to drop duplicates; older ones are forgotten.
  var SEEN_LIMIT = 5000;
  var IDENTIFY_TIMEOUT_MS = 10000;

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
    this.url = url;
    this.uid = options.uid;
    this.key = options.key || "";
    this.ack = options.ack !== false;
    this.notifications = options.notifications !== false;
    this.state = "closed";
    this.socket = null;
    this._io = options.io || (typeof io !== "undefined" ? io : null);
    this._socketOptions = options.socket || {};
    this._listeners = {};
    this._seen = new Set();
    this._seenOrder = [];
    this._refused = null;
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

  /** The identifier the server expects: an object in ack mode, "uid:key" as in the seed. */
  RedMessenger.prototype.generateIdentifier = function () {
    if (!this.ack) {
      return this.key ? this.uid + ":" + this.key : this.uid;
    }
    var identifier = { uid: this.uid, ack: true };
    if (this.key) identifier.key = this.key;
    return identifier;
  };

  /** Open the socket; it reconnects by itself and identifies again each time. */
  RedMessenger.prototype.connect = function () {
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
      self._emit("error", { code: "connect_error", message: String((err && err.message) || err) });
    });
    socket.on("disconnect", function (reason) {
      // socket.io retries by itself, except after close(), a refusal for good, or the
      // server closing this socket on purpose (e.g. more tabs than user_conn_limit).
      var willRetry = socket.active;
      self.state = willRetry ? "disconnected" : "closed";
      self._emit("disconnected", { reason: reason, willRetry: willRetry });
    });
    return this;
  };

  /** Close the socket for good (call connect() to open it again). */
  RedMessenger.prototype.close = function () {
    if (this.socket) this.socket.disconnect();
    this.state = "closed";
    return this;
  };

  RedMessenger.prototype._identify = function () {
    var self = this;
    var socket = this.socket;
    var at = Date.now();
    socket.timeout(IDENTIFY_TIMEOUT_MS).emit("identifier", this.generateIdentifier(), function (err, reply) {
      if (socket !== self.socket || !socket.connected) return;
      if (err) {
        self._emit("error", { code: "identify_timeout", message: "The server did not answer the identifier" });
        return;
      }
      if (reply && reply.ok) {
        self.state = "identified";
        self._emit("identified", { uid: reply.uid, at: at });
      } else {
        self._refuse((reply && reply.error) || "unknown");
      }
    });
  };

  RedMessenger.prototype._refuse = function (code) {
    if (this._refused === code) return; // rm_error and the identify reply say it both
    this._refused = code;
    this._emit("error", { code: code, message: RedMessenger.describe(code) });
    if (FINAL_ERRORS.indexOf(code) >= 0 && this.socket) {
      // The server closes the socket; stop socket.io from retrying what cannot succeed.
      this.socket.disconnect();
      this.state = "closed";
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
      if (typeof ack === "function") ack(true);
    }
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
      unauthorized: "Wrong or missing key for this user.",
      conn_limit: "The server is full; retrying.",
      unavailable: "The server cannot reach Redis; retrying.",
      identify_timeout: "The server did not get our identifier in time; retrying.",
      connect_error: "Cannot reach the server; retrying."
    }[code] || "Error: " + code;
  };

  return RedMessenger;
});
