"""
The admin pages' inline stylesheet and script (no external assets: the
pages work offline).

The script polls the JSON API named by the page's C{data-poll} attribute
every two seconds and updates, in place:
  - elements with C{data-path} (a JSON array of keys into the answer; an
    object key like C{{"id": "b1"}} picks the list item whose C{id} is
    C{b1}), formatted by C{data-format}, their class set from
    C{data-class} and the value;
  - C{tbody} elements with C{data-list} (a path to a list) and
    C{data-cols} (C{[[path, format], ...]}), rebuilt row by row;
  - elements with C{data-history} (a path to a list of probe results),
    rebuilt as one small square per probe.
The formats match L{golb.admin.pages.formatValue}.
"""

__all__ = ["CSS", "SCRIPT", "POLL_INTERVAL"]

# Seconds between two refreshes of a page's live data.
POLL_INTERVAL = 2

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f5f6f8; }
header { background: #1d2330; color: #fff; padding: .6em 1.2em; display: flex; gap: 1.5em;
  align-items: center; }
header a { color: #cfd8ff; text-decoration: none; }
header a.here { color: #fff; font-weight: 600; }
header .brand { font-weight: 700; color: #fff; }
#live { margin-left: auto; font-size: 12px; color: #9fe29f; }
#live.stale { color: #ffb4a8; }
main { padding: 1em 1.2em; }
h1 { font-size: 20px; margin: .2em 0 .6em; }
h2 { font-size: 16px; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; background: #fff; width: 100%; margin-bottom: .5em; }
th, td { text-align: left; padding: .3em .6em; border-bottom: 1px solid #e3e6ec;
  vertical-align: top; }
th { background: #eceff4; font-weight: 600; font-size: 12px; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; }
dl.facts dt { font-weight: 600; }
dl.facts dd { margin: 0; }
.state { font-weight: 600; }
.state-ready { color: #137333; }
.state-drain { color: #b06000; }
.state-maint { color: #a50e0e; }
.ok-true { color: #137333; }
.ok-false { color: #a50e0e; font-weight: 600; }
.probe { display: inline-block; width: 7px; height: 12px; margin-right: 1px;
  border-radius: 1px; }
.probe-ok { background: #34a853; }
.probe-fail { background: #ea4335; }
form.inline { display: inline; margin: 0; }
button { font: inherit; font-size: 12px; padding: .1em .6em; cursor: pointer; }
input.weight { width: 4em; font: inherit; font-size: 12px; }
pre { background: #fff; padding: 1em; overflow: auto; border: 1px solid #e3e6ec; }
.muted { color: #6b7280; }
.notice { background: #fff4e5; border: 1px solid #f0c36d; padding: .5em 1em; }
.error { background: #fdecea; border: 1px solid #f5a097; padding: .5em 1em; }
"""

SCRIPT = """
"use strict";
(function () {
  var body = document.body;
  var poll = body.getAttribute("data-poll");
  var live = document.getElementById("live");
  var count = 0;
  function dig(data, path) {
    for (var i = 0; i < path.length; i++) {
      if (data === null || data === undefined) return null;
      var key = path[i];
      if (key !== null && typeof key === "object") {
        var field = Object.keys(key)[0], found = null;
        (Array.isArray(data) ? data : []).forEach(function (item) {
          if (item && item[field] === key[field]) found = item;
        });
        data = found;
      } else {
        data = data[key];
      }
    }
    return data === undefined ? null : data;
  }
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function fmt(value, format) {
    if (value === null || value === undefined) return "\\u2013";
    switch (format) {
      case "bool": return value ? "yes" : "no";
      case "ms": return (value * 1000).toFixed(1) + " ms";
      case "rate": return value.toFixed(1) + "/s";
      case "time":
        if (!value) return "\\u2013";
        var d = new Date(value * 1000);
        return pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" +
          pad(d.getUTCSeconds());
      case "ago":
        if (!value) return "\\u2013";
        return Math.max(0, Math.round(Date.now() / 1000 - value)) + "s ago";
      case "json": return JSON.stringify(value);
      default: return String(value);
    }
  }
  function paint(el, value) {
    var text = fmt(value, el.getAttribute("data-format"));
    if (el.textContent !== text) el.textContent = text;
    var cls = el.getAttribute("data-class");
    if (cls) el.className = cls + " " + cls + "-" + (typeof value === "string" ? value :
      JSON.stringify(value));
  }
  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); }
  function rows(el, items) {
    var cols = JSON.parse(el.getAttribute("data-cols"));
    clear(el);
    (items || []).forEach(function (item) {
      var tr = document.createElement("tr");
      cols.forEach(function (col) {
        var td = document.createElement("td");
        td.textContent = fmt(dig(item, col[0]), col[1]);
        tr.appendChild(td);
      });
      el.appendChild(tr);
    });
    if (!items || !items.length) {
      var tr = document.createElement("tr"), td = document.createElement("td");
      td.colSpan = cols.length;
      td.className = "muted";
      td.textContent = "none";
      tr.appendChild(td);
      el.appendChild(tr);
    }
  }
  function probes(el, items) {
    clear(el);
    (items || []).forEach(function (p) {
      var s = document.createElement("span");
      s.className = "probe " + (p.ok ? "probe-ok" : "probe-fail");
      s.title = fmt(p.at, "time") + " " + p.detail + " (" + fmt(p.latency, "ms") + ")";
      el.appendChild(s);
    });
  }
  function each(selector, fn) {
    Array.prototype.forEach.call(document.querySelectorAll(selector), fn);
  }
  function update(data) {
    each("[data-path]", function (el) {
      paint(el, dig(data, JSON.parse(el.getAttribute("data-path"))));
    });
    each("[data-list]", function (el) {
      rows(el, dig(data, JSON.parse(el.getAttribute("data-list"))));
    });
    each("[data-history]", function (el) {
      probes(el, dig(data, JSON.parse(el.getAttribute("data-history"))));
    });
  }
  function refresh() {
    fetch(poll, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (data) {
        update(data);
        count += 1;
        body.setAttribute("data-refreshed", String(count));
        live.textContent = "live \\u00b7 updated " + fmt(Date.now() / 1000, "time") + " UTC";
        live.className = "";
      })
      .catch(function (error) {
        live.textContent = "not updating: " + error.message;
        live.className = "stale";
      })
      .then(function () { setTimeout(refresh, INTERVAL); });
  }
  if (poll) setTimeout(refresh, INTERVAL);
})();
""".replace("INTERVAL", str(POLL_INTERVAL * 1000))
