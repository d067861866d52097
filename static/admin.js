// The admin page: polls /admin/stats.json, turns counters into rates, draws them with uPlot.
// The browser resends the page's HTTP Basic credentials with each fetch (same origin).
(function () {
  "use strict";

  var body = document.body;
  var POLL_MS = Number(body.dataset.pollMs) || 1000;
  var REASONS = body.dataset.reasons.split(",");
  var WINDOW = 120; // points kept per chart: two minutes at one a second
  var chartsOn = body.dataset.charts === "true" && typeof uPlot !== "undefined";
  var $ = function (id) { return document.getElementById(id); };

  var previous = null; // the last snapshot, for rates
  var history = { time: [] }; // column name -> values, uPlot's columnar layout

  // Each chart: its element, and its series as [label, column, colour].
  var CHARTS = [
    { id: "chart-messages", series: [
      ["delivered/s", "delivered", "#2e86c1"], ["queued/s", "queued", "#ca6f1e"],
      ["drained/s", "drained", "#28b463"], ["recommitted/s", "recommitted", "#c0392b"]] },
    { id: "chart-sockets", series: [["open sockets", "sockets", "#7d3c98"]] },
    { id: "chart-identify", series: [["identified/s", "identified", "#28b463"]].concat(
      REASONS.map(function (reason, i) {
        return [reason + "/s", "fail:" + reason, ["#c0392b", "#e67e22", "#f1c40f", "#8e44ad", "#5d6d7e", "#a04000"][i % 6]];
      }), [["other failures/s", "fail:other", "#17202a"]]) },
    { id: "chart-redis", series: [
      ["Redis ping ms", "ping", "#2e86c1"], ["listener lag ms", "lag", "#ca6f1e"]] }
  ];

  function column(name) {
    if (!history[name]) history[name] = [];
    return history[name];
  }

  function rate(now, before, seconds) {
    return before === undefined || seconds <= 0 ? null : Math.max(0, (now - before) / seconds);
  }

  function failures(snapshot) {
    var by = { other: 0 };
    REASONS.forEach(function (reason) { by[reason] = 0; });
    Object.keys(snapshot.identify_failures).forEach(function (reason) {
      if (reason in by && reason !== "other") by[reason] += snapshot.identify_failures[reason];
      else by.other += snapshot.identify_failures[reason];
    });
    return by;
  }

  function record(snapshot) {
    var seconds = previous ? (snapshot.time - previous.time) / 1000 : 0;
    var totals = snapshot.totals;
    var before = previous ? previous.totals : {};
    var point = {
      time: snapshot.time / 1000,
      delivered: rate(totals.delivered, before.delivered, seconds),
      queued: rate(totals.queued, before.queued, seconds),
      drained: rate(totals.drained, before.drained, seconds),
      recommitted: rate(totals.recommitted, before.recommitted, seconds),
      identified: rate(totals.identified, before.identified, seconds),
      sockets: snapshot.sockets_open,
      ping: snapshot.redis_ping_ms,
      lag: snapshot.round_trip_age_ms
    };
    var now = failures(snapshot);
    var then = previous ? failures(previous) : {};
    Object.keys(now).forEach(function (reason) {
      point["fail:" + reason] = rate(now[reason], then[reason], seconds);
    });
    Object.keys(point).forEach(function (name) {
      var values = column(name);
      values.push(point[name]);
      if (values.length > WINDOW) values.shift();
    });
    previous = snapshot;
  }

  ///// Charts /////

  function makeCharts() {
    CHARTS.forEach(function (chart) {
      var element = $(chart.id);
      var options = {
        width: Math.max(280, element.clientWidth - 24),
        height: 200,
        scales: { x: { time: true } },
        series: [{}].concat(chart.series.map(function (s) {
          return { label: s[0], stroke: s[2], width: 2, spanGaps: true };
        })),
        axes: [{}, { size: 60 }],
        // Labels only: values under the cursor would mostly read "--".
        legend: { live: false }
      };
      chart.plot = new uPlot(options, data(chart), element);
    });
    window.addEventListener("resize", function () {
      CHARTS.forEach(function (chart) {
        chart.plot.setSize({ width: Math.max(280, $(chart.id).clientWidth - 24), height: 200 });
      });
    });
  }

  function data(chart) {
    return [column("time")].concat(chart.series.map(function (s) { return column(s[1]); }));
  }

  function draw() {
    CHARTS.forEach(function (chart) {
      chart.plot.setData(data(chart));
      // For the tests and for anyone curious: how many points this chart holds.
      $(chart.id).dataset.points = String(history.time.length);
    });
  }

  ///// Numbers and tables /////

  function number(value) {
    return value === null || value === undefined ? "–" : Math.round(value).toLocaleString("en");
  }

  function ms(value) {
    return value === null || value === undefined ? "–" : value.toFixed(value < 10 ? 2 : 0) + " ms";
  }

  function cell(row, text) {
    var td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function fill(table, rows) {
    var tbody = $(table).querySelector("tbody");
    tbody.replaceChildren();
    rows.forEach(function (values) {
      var tr = document.createElement("tr");
      values.forEach(function (value) { cell(tr, value); });
      tbody.appendChild(tr);
    });
    return tbody;
  }

  function show(snapshot) {
    $("server-id").textContent = snapshot.server;
    $("updated").textContent = "updated " + new Date(snapshot.time).toLocaleTimeString("en-GB");
    $("tile-subscribed").textContent = snapshot.subscribed ? "yes" : "NO";
    $("tile-subscribed").dataset.bad = String(!snapshot.subscribed);
    $("tile-sockets").textContent = number(snapshot.sockets_open);
    ["received", "delivered", "queued", "drained", "recommitted", "failed"].forEach(function (name) {
      $("tile-" + name).textContent = number(snapshot.totals[name]);
    });
    $("tile-failed").dataset.bad = String(snapshot.totals.failed > 0);
    $("tile-ping").textContent = ms(snapshot.redis_ping_ms);
    $("tile-lag").textContent = ms(snapshot.round_trip_age_ms);

    if (snapshot.servers) {
      var tbody = fill("servers", snapshot.servers.map(function (s) {
        return [s.id + (s.me ? " (this one)" : ""), s.about || "–", number(s.sockets),
                s.heartbeat_ttl ? "expires in " + s.heartbeat_ttl + " s" : "expired"];
      }));
      snapshot.servers.forEach(function (s, i) { tbody.rows[i].dataset.server = s.id; });
    }
    if (snapshot.queues) {
      var q = snapshot.queues;
      fill("queues", q.deepest.map(function (entry) { return [entry.uid, number(entry.length)]; }));
      $("queues-note").textContent = q.deepest.length
        ? number(q.found) + (q.found === 1 ? " user has" : " users have") + " queued messages"
          + (q.complete ? "" : " (in the part of a large key space scanned)")
        : "No user has queued messages.";
    }
    var inbox = snapshot.inbox;
    $("inbox").textContent = inbox
      ? number(inbox.unhandled) + " unhandled (oldest " + inbox.oldest_s + " s) · read "
        + (inbox.read_here ? "here" : "by another server") + " · forwarded here " + number(inbox.forwarded)
        + ", repeats " + number(inbox.repeats) + ", invalid " + number(inbox.invalid)
      : "The inbox could not be read.";
    $("fetch-error").hidden = !snapshot.redis_error;
    if (snapshot.redis_error) $("fetch-error").textContent = "Redis did not answer: " + snapshot.redis_error;
  }

  ///// Polling /////

  function poll() {
    fetch("/admin/stats.json", { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (snapshot) {
        record(snapshot);
        show(snapshot);
        if (chartsOn) draw();
      })
      .catch(function (error) {
        $("fetch-error").hidden = false;
        $("fetch-error").textContent = "Cannot read /admin/stats.json: " + error.message;
      })
      .then(function () { setTimeout(poll, POLL_MS); });
  }

  if (chartsOn) makeCharts();
  poll();
})();
