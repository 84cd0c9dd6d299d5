// The status page's refresh: reads /admin/status (with the session cookie) every few seconds and
// writes the new numbers into the page the server drew, the same words it uses (render.py).
"use strict";
(function () {
  var meta = document.getElementById("meta");
  if (!meta || !window.fetch) return;
  var url = meta.getAttribute("data-status-url");
  var every = (parseFloat(meta.getAttribute("data-refresh-seconds")) || 3) * 1000;
  var WORDS = { healthy: "healthy", cooling_down: "cooling down", failing: "failing", probing: "probing" };
  var WIDTH = 120, HEIGHT = 24;

  function clock(t) {
    if (t === null || t === undefined) return "";
    return new Date(t * 1000).toISOString().slice(11, 19) + " UTC";
  }
  function num(v, digits) {
    if (v === null || v === undefined) return "\u2014";
    digits = digits || 0;
    return Number(v).toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }
  function setText(el, text) { if (el && el.textContent !== String(text)) el.textContent = String(text); }
  function field(row, name) { return row.querySelector('[data-field="' + name + '"]'); }
  // One bar per minute with requests (errors inside them), as render.py draws them.
  function bars(values, peak) {
    var step = WIDTH / Math.max(1, values.length), top = Math.max(1, peak), parts = [];
    values.forEach(function (v, i) {
      if (v > 0) {
        parts.push("M" + ((i + 0.5) * step).toFixed(1) + "," + HEIGHT + "V" +
          (HEIGHT - Math.max(1.5, v / top * HEIGHT)).toFixed(1));
      }
    });
    return parts.join(" ");
  }
  function cell(row, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
  }
  function rebuild(tbody, items, columns, empty) {
    while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
    if (!items.length) {
      var tr = document.createElement("tr");
      tr.className = "empty";
      var td = document.createElement("td");
      td.colSpan = columns;
      td.textContent = empty;
      tr.appendChild(td);
      tbody.appendChild(tr);
      return;
    }
    items.forEach(function (item) {
      var tr = document.createElement("tr");
      item.forEach(function (c) { cell(tr, c[0], c[1]); });
      tbody.appendChild(tr);
    });
  }
  function windowText(name, w) {
    var used = w.limit - w.remaining;
    if (name.indexOf("budget") === 0) return "$" + num(used, 2) + " of $" + num(w.limit, 2);
    return num(used) + " of " + num(w.limit);
  }

  function deployments(list) {
    var rows = document.querySelectorAll("#deployments tr[data-key]");
    list.forEach(function (d) {
      var row = null;
      for (var i = 0; i < rows.length; i++) if (rows[i].getAttribute("data-key") === d.key) row = rows[i];
      if (!row) return;
      var a = d.activity;
      row.className = "state-" + d.state;
      var state = field(row, "state");
      var words = WORDS[d.state] || d.state, until = clock(d.cooling_down_until);
      if (state.getAttribute("data-shown") !== words + until) {
        while (state.firstChild) state.removeChild(state.firstChild);
        var badge = document.createElement("span");
        badge.className = "badge";
        badge.textContent = words;
        state.appendChild(badge);
        if (until) {
          var span = document.createElement("span");
          span.className = "until";
          span.textContent = "until " + until;
          state.appendChild(document.createTextNode(" "));
          state.appendChild(span);
        }
        state.setAttribute("data-shown", words + until);
      }
      setText(field(row, "failures"), d.consecutive_failures);
      setText(field(row, "latency"), num(a.latency_ms, 1) + (a.latency_ms !== null ? " ms" : ""));
      setText(field(row, "in_flight"), a.in_flight);
      setText(field(row, "requests"), a.requests_recent);
      setText(field(row, "errors"), a.errors_recent);
      var peak = Math.max.apply(null, a.requests_per_minute.concat(a.errors_per_minute, [1]));
      var paths = field(row, "spark").querySelectorAll("path");
      paths[0].setAttribute("d", bars(a.requests_per_minute, peak));
      paths[1].setAttribute("d", bars(a.errors_per_minute, peak));
    });
  }

  function tokens(list) {
    var rows = document.querySelectorAll("#tokens tr[data-limit]");
    list.forEach(function (t) {
      for (var i = 0; i < rows.length; i++) {
        var row = rows[i], w = t.quota[row.getAttribute("data-limit")];
        if (row.getAttribute("data-owner") !== t.name || !w || w.remaining === null) continue;
        setText(field(row, "used"), windowText(row.getAttribute("data-limit"), w));
        var meter = row.querySelector("meter");
        if (meter) meter.value = w.limit - w.remaining;
      }
    });
  }

  function show(report) {
    var a = report.activity;
    setText(document.getElementById("generated"), "as of " + clock(a.generated_at));
    setText(document.getElementById("workers"), a.workers);
    setText(document.getElementById("in-flight"), a.requests_in_flight);
    setText(document.getElementById("storage"), report.rate_limit_storage.ok ? "ok" : "failing");
    deployments(report.deployments);
    tokens(report.tokens);
    rebuild(document.querySelector("#costs tbody"), a.costs_today.map(function (c) {
      return [[c.token], [c.model], [c.requests], [c.tokens], ["$" + c.cost_usd.toFixed(4)]];
    }), 5, "nothing yet today");
    rebuild(document.querySelector("#errors tbody"), a.last_errors.map(function (e) {
      return [[clock(e.time)], [e.model || e.deployment || ""], [e.status || ""], [e.message || "", "message"]];
    }), 4, "none");
    var cache = a.cache, text;
    if (!cache.enabled) text = "cache off";
    else if (cache.hit_rate === null) text = "no lookups yet";
    else text = (cache.hit_rate * 100).toFixed(1) + "% hits";
    var el = document.getElementById("cache");
    setText(el, text + (cache.enabled ? " " : ""));
    if (cache.enabled) {
      var dim = document.createElement("span");
      dim.className = "dim";
      dim.textContent = "(" + cache.hits + " hits, " + cache.misses + " misses)";
      el.appendChild(dim);
    }
  }

  var live = document.getElementById("live");
  function state(text, ok) {
    live.hidden = false;
    setText(live, text);
    live.className = ok ? "live" : "live stale";
  }
  function refresh() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (response) {
        if (response.status === 401 || response.status === 404) {
          state("signed out: reload to sign in", false);
          return null;
        }
        if (!response.ok) throw new Error(String(response.status));
        return response.json();
      })
      .then(function (report) {
        if (!report) return;
        show(report);
        state("live", true);
        setTimeout(refresh, every);
      })
      .catch(function () {
        state("not updating (retrying)", false);
        setTimeout(refresh, every);
      });
  }
  setTimeout(refresh, every);
})();
