"""The status page: one HTML document, styles and script inline, system fonts, no
request beyond `api/status` on its own origin, so it works offline and behind a
strict Content-Security-Policy of its own (see `CSP`).

The first status document is embedded in the page (rendered at once, no blank
page while the first fetch runs); the script then fetches `api/status`, relative
to the page, every few seconds and re-renders in place. Every text from the
document is inserted with textContent, never as HTML.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["CSP", "render_page"]

#: Nothing but this page's own inline code and its origin's api/status.
CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'self'")

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>LLM spend - otel-budget</title>
<style>
:root {
  --bg: #f6f7f9; --card: #ffffff; --fg: #1b1f24; --muted: #5b6470; --line: #dde1e6;
  --ok: #1f883d; --warn: #bf8700; --bad: #cf222e; --bar: #d8dee4; --mark: #1b1f24;
  --fill: #2f81f7;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #0d1117; --card: #161b22; --fg: #e6edf3; --muted: #9198a1; --line: #30363d;
    --ok: #3fb950; --warn: #d29922; --bad: #f85149; --bar: #30363d; --mark: #e6edf3;
    --fill: #4493f8;
  }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 16px; }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 8px 16px;
  margin-bottom: 12px; }
h1 { font-size: 20px; margin: 0; }
h2 { font-size: 16px; margin: 22px 0 8px; }
.muted { color: var(--muted); }
.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 13px;
  border: 1px solid currentColor; }
.badge.ok { color: var(--ok); } .badge.degraded, .badge.bad { color: var(--bad); }
.badge.warn, .badge.unknown { color: var(--warn); }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr));
  gap: 12px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 12px 14px; }
.budget h3 { margin: 0 0 2px; font-size: 15px; display: flex; gap: 8px;
  align-items: baseline; flex-wrap: wrap; }
.big { font-size: 22px; font-weight: 600; }
.bar { position: relative; height: 12px; background: var(--bar); border-radius: 6px;
  margin: 8px 0 6px; overflow: visible; }
.fill { position: absolute; left: 0; top: 0; bottom: 0; border-radius: 6px;
  background: var(--fill); }
.fill.warn { background: var(--warn); } .fill.bad { background: var(--bad); }
.mark { position: absolute; top: -3px; bottom: -3px; width: 2px; background: var(--mark);
  opacity: .7; }
.mark.sent { opacity: 1; }
dl { display: grid; grid-template-columns: auto 1fr; gap: 2px 10px; margin: 6px 0 0;
  font-size: 13px; }
dt { color: var(--muted); } dd { margin: 0; min-width: 0; overflow-wrap: anywhere; }
.card, .grid > * { min-width: 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; background: var(--card);
  border: 1px solid var(--line); border-radius: 8px; font-size: 14px; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { color: var(--muted); font-weight: 500; font-size: 13px; }
td.r, th.r { text-align: right; }
td { white-space: nowrap; } td.wrap { white-space: normal; min-width: 18em; }
tr:last-child td { border-bottom: 0; }
.two { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
@media (max-width: 640px) {
  main { padding: 10px; } .two { grid-template-columns: 1fr; }
  th, td { padding: 5px 6px; }
}
.errors { color: var(--bad); }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
footer { margin: 24px 0 8px; font-size: 12px; }
</style>
</head>
<body>
<main>
<header>
  <h1>LLM spend</h1>
  <span id="health" class="badge unknown">loading</span>
  <span class="muted">today <b id="date" class="num"></b> (<span id="tz"></span>):
    <b id="total" class="num"></b></span>
  <span class="muted" id="updated"></span>
</header>
<div id="errors" class="errors"></div>
<section><h2>Budgets</h2><div id="budgets" class="grid"></div></section>
<div class="two">
  <section><h2>Today by model</h2><div class="scroll" id="by-model"></div></section>
  <section><h2>Today by agent</h2><div class="scroll" id="by-agent"></div></section>
</div>
<section><h2>Refusals</h2><div class="scroll" id="refusals"></div></section>
<section><h2>Writers <span class="muted" id="writer-counts"></span></h2>
  <div class="scroll" id="writers"></div></section>
<section><h2>This process</h2><div id="process" class="card"></div></section>
<footer class="muted">otel-budget status page: refreshes every
  <span id="every">5</span> s from <code>api/status</code>
  (<span id="refreshes">0</span> refreshes).</footer>
</main>
<script id="initial" type="application/json">__INITIAL__</script>
<script>
(function () {
  "use strict";
  var EVERY_MS = 5000;
  var refreshes = 0;
  function $(id) { return document.getElementById(id); }
  function el(tag, attrs) {
    var node = document.createElement(tag);
    if (attrs) for (var k in attrs) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "cls") node.className = attrs[k];
      else node.setAttribute(k, attrs[k]);
    }
    for (var i = 2; i < arguments.length; i++) {
      var c = arguments[i];
      if (c == null) continue;
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return node;
  }
  function usd(v) {
    if (v == null || !isFinite(v)) return "-";
    var a = Math.abs(v);
    var digits = a >= 1 || a === 0 ? 2 : (a >= 0.01 ? 4 : 6);
    return "$" + Number(v).toFixed(digits);
  }
  function pct(v) { return v == null ? "-" : (v * 100).toFixed(1) + "%"; }
  function when(iso) {
    if (!iso) return "-";
    if (iso === "reached") return "reached";
    var d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toLocaleString(undefined, {month: "short",
      day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit"});
  }
  function ago(s) {
    if (s == null) return "-";
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    return (s / 3600).toFixed(1) + " h ago";
  }
  function keyText(key) {
    if (!key) return "";
    var parts = [];
    for (var k in key) parts.push(k + "=" + key[k]);
    return parts.join(", ");
  }
  function table(head, rows, empty) {
    if (!rows.length) return el("p", {cls: "muted", text: empty});
    var tr = el("tr");
    // ">name": a right-aligned number column; "~name": free text that wraps.
    function cls(h) { return h[0] === ">" ? "r num" : (h[0] === "~" ? "wrap" : ""); }
    head.forEach(function (h) {
      tr.appendChild(el("th", {text: h.replace(/^[>~]/, ""), cls: cls(h)}));
    });
    var body = el("tbody");
    rows.forEach(function (cells) {
      var row = el("tr");
      cells.forEach(function (c, i) {
        var td = el("td", {cls: cls(head[i])});
        if (c != null && typeof c === "object") td.appendChild(c);
        else td.textContent = c == null ? "-" : String(c);
        row.appendChild(td);
      });
      body.appendChild(row);
    });
    return el("table", null, el("thead", null, tr), body);
  }
  function budgetCard(b) {
    var u = b.utilization;
    var fill = el("div", {cls: "fill" + (u != null && u >= 1 ? " bad"
      : (u != null && u >= 0.8 ? " warn" : ""))});
    fill.style.width = Math.max(0, Math.min(1, u || 0)) * 100 + "%";
    var bar = el("div", {cls: "bar", role: "img",
      "aria-label": b.name + " " + pct(u) + " of cap"}, fill);
    var sent = b.alerts_sent || [];
    (b.alert_ratios || []).forEach(function (r) {
      var m = el("div", {cls: "mark" + (sent.indexOf(r) >= 0 ? " sent" : ""),
        title: "alert at " + pct(r) + (sent.indexOf(r) >= 0 ? " (sent)" : "")});
      m.style.left = "calc(" + Math.min(1, r) * 100 + "% - 1px)";
      bar.appendChild(m);
    });
    var spend = el("span", {cls: "big num spend", "data-usd": String(b.spend_usd),
      text: usd(b.spend_usd)});
    var dl = el("dl");
    function row(k, v) { dl.appendChild(el("dt", {text: k})); dl.appendChild(el("dd",
      {text: v})); }
    row("window", b.window + (b.window_end ? " (ends " + when(b.window_end) + ")" : ""));
    row("remaining", usd(b.remaining_usd));
    row("burn rate", b.burn_usd_per_hour == null ? "-" : usd(b.burn_usd_per_hour) + "/h");
    row("projected", usd(b.projected_usd) + " at window end");
    row("cap hit", b.cap_hit_at ? when(b.cap_hit_at) : "not at this rate");
    row("alerts", (sent.length ? sent.map(pct).join(", ") + " sent" : "none sent") +
      ((b.alerts_pending || []).length ? "; pending " + b.alerts_pending.map(pct).join(", ")
        : ""));
    if (b.reserved_usd) row("reserved", usd(b.reserved_usd));
    if (b.match) row("match", keyText(b.match));
    var card = el("article", {cls: "card budget", "data-budget": b.name},
      el("h3", null, el("span", {cls: "name", text: b.name}),
        el("span", {cls: "muted", text: (b.period || "") + (b.hard ? " - hard" +
          (b.enforce ? " (" + b.enforce + ")" : "") : "")})),
      el("div", null, spend, el("span", {cls: "muted num",
        text: " of " + (b.cap_usd == null ? "no cap known" : usd(b.cap_usd)) +
          " - " + pct(u)})),
      bar, dl);
    var keys = b.top_keys || b.keys;
    if (keys && keys.length) {
      card.appendChild(table(["key", ">spend", ">of cap"], keys.slice(0, 5).map(function (k) {
        return [keyText(k.key || k.attributes), usd(k.spend_usd), pct(k.utilization)];
      }), ""));
    }
    return card;
  }
  function render(s) {
    var h = s.health;
    var badge = $("health");
    var status = h ? h.status : (s.errors && s.errors.length ? "degraded" : "ok");
    badge.textContent = h ? status : (status === "ok" ? "store read ok" : "store errors");
    badge.className = "badge " + status;
    $("date").textContent = s.date;
    $("tz").textContent = s.timezone;
    $("total").textContent = usd(s.total_usd);
    $("total").setAttribute("data-usd", String(s.total_usd));
    $("updated").textContent = "as of " + when(s.generated_at);
    document.body.setAttribute("data-generated-at", s.generated_at);
    var errs = $("errors"); errs.textContent = "";
    (s.errors || []).forEach(function (e) { errs.appendChild(el("p", {text: e})); });
    var budgets = $("budgets"); budgets.textContent = "";
    (s.budgets || []).forEach(function (b) { budgets.appendChild(budgetCard(b)); });
    if (!(s.budgets || []).length) budgets.appendChild(el("p", {cls: "muted",
      text: "No budgets known yet."}));
    function breakdown(id, rows, label) {
      var box = $(id); box.textContent = "";
      box.appendChild(table([label, ">spend today"], rows.map(function (r) {
        return [r.value == null ? "(none)" : r.value, usd(r.spend_usd)];
      }), "Nothing recorded today."));
    }
    breakdown("by-model", s.by_model || [], "model");
    breakdown("by-agent", s.by_agent || [], "agent");
    var refusals = $("refusals"); refusals.textContent = "";
    refusals.appendChild(table(["when", "budget", "key", ">amount", "writer", "~why"],
      (s.refusals || []).slice(0, 20).map(function (r) {
        return [when(r.at), r.budget, keyText(r.key), usd(r.amount_usd), r.writer,
          r.reason];
      }), "No refusals."));
    var w = s.writers || {list: []};
    $("writer-counts").textContent = "(" + (w.live || 0) + " live, " + (w.stale || 0) +
      " stale, " + (w.retired || 0) + " retired)";
    var writers = $("writers"); writers.textContent = "";
    writers.appendChild(table(["writer", "instance", "state", ">spend today", "last seen"],
      (w.list || []).slice(0, 25).map(function (x) {
        return [x.writer_id, x.instance_id, x.state, usd(x.spend_usd), ago(x.age_s)];
      }), "No writer has checkpointed today."));
    var p = $("process"); p.textContent = "";
    if (h) {
      var dl = el("dl");
      function row(k, v) { dl.appendChild(el("dt", {text: k}));
        dl.appendChild(el("dd", {text: v})); }
      row("status", h.status + ((h.reasons || []).length ? ": " + h.reasons.join("; ") : ""));
      row("writer", (s.writer_id || "-") + " (instance " + (s.instance_id || "-") + ")");
      row("spool", h.spool ? (h.spool.entries || 0) + " entr" +
        ((h.spool.entries || 0) === 1 ? "y" : "ies") + " waiting" : "none");
      row("store", h.store_up === false ? "down" : "up");
      row("unflushed", usd(h.unflushed_usd));
      row("alerts pending delivery", String(h.pending_nudges || 0));
      p.appendChild(dl);
    } else {
      p.appendChild(el("p", {cls: "muted",
        text: "Served from the store alone: no process health here."}));
    }
  }
  function refresh() {
    var path = location.pathname;
    var url = (path.charAt(path.length - 1) === "/" ? path : path + "/") + "api/status";
    fetch(url, {cache: "no-store", headers: {"Accept": "application/json"}})
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (s) {
        render(s);
        refreshes += 1;
        $("refreshes").textContent = String(refreshes);
        document.body.setAttribute("data-refreshes", String(refreshes));
      })
      .catch(function (e) {
        $("health").textContent = "unreachable";
        $("health").className = "badge bad";
        $("updated").textContent = "last refresh failed: " + e.message;
      })
      .then(function () { setTimeout(refresh, EVERY_MS); });
  }
  $("every").textContent = String(EVERY_MS / 1000);
  try {
    var initial = JSON.parse($("initial").textContent || "null");
    if (initial) render(initial);
  } catch (e) { /* the first fetch renders instead */ }
  refresh();
})();
</script>
</body>
</html>
"""


def render_page(initial: dict[str, Any] | None = None) -> bytes:
    """The page, with `initial` (a status document) embedded for the first paint."""
    text = json.dumps(initial, sort_keys=True) if initial is not None else "null"
    # Inside <script>, only "</" (and "<!--") could end or confuse the element.
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return _PAGE.replace("__INITIAL__", text).encode("utf-8", "backslashreplace")
