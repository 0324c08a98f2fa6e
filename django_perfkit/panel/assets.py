"""The panel's stylesheet and script, served by the panel itself.

Served from perfkit's URLs (not ``{% static %}``) so the panel works without
``django.contrib.staticfiles`` and under a Content-Security-Policy of
``'self'``: no inline style or script in the pages.
"""

from __future__ import annotations

__all__ = ["CSS", "JS"]

CSS = """
:root { --fg: #1d2330; --muted: #667085; --line: #e4e7ec; --bg: #f8f9fb; --accent: #2e5aac;
        --bad: #c2362b; --warn: #b26b00; --ok: #1f7a3a; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
       color: var(--fg); background: var(--bg); }
header { display: flex; gap: 1.5rem; align-items: center; padding: .6rem 1.2rem;
         background: #fff; border-bottom: 1px solid var(--line); flex-wrap: wrap; }
header .brand { font-weight: 700; color: var(--accent); text-decoration: none; }
nav a { margin-right: 1rem; color: var(--fg); text-decoration: none; padding: .3rem 0; }
nav a.current { border-bottom: 2px solid var(--accent); font-weight: 600; }
header form { margin-left: auto; display: flex; gap: .5rem; align-items: center;
              color: var(--muted); }
main { padding: 1rem 1.2rem 3rem; max-width: 1400px; }
h1 { font-size: 1.3rem; margin: .2rem 0 1rem; }
h2 { font-size: 1.05rem; margin: 1.6rem 0 .6rem; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: .8rem; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: .7rem .9rem; }
.card .value { font-size: 1.5rem; font-weight: 650; }
.card .label { color: var(--muted); font-size: .85rem; }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid var(--line); }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid var(--line);
         vertical-align: top; }
th { font-weight: 600; background: #f2f4f7; white-space: nowrap; }
th a { color: inherit; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
code, .sql { font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace;
             word-break: break-word; }
.muted { color: var(--muted); }
.bad { color: var(--bad); font-weight: 600; }
.warn { color: var(--warn); }
.notice { background: #fff8e6; border: 1px solid #f3d38a; padding: .6rem .9rem;
          border-radius: 6px; }
.bad-notice { border-color: var(--bad); }
.chart { background: #fff; border: 1px solid var(--line); border-radius: 6px;
         color: var(--accent); }
.chart .bar { fill: currentColor; opacity: .75; }
.chart .bad { fill: var(--bad); }
.chart .axis { font-size: 10px; fill: var(--muted); }
.spark { color: var(--accent); vertical-align: middle; }
details summary { cursor: pointer; }
details > div { padding: .4rem 0 .6rem 1rem; }
.chain { font-family: ui-monospace, monospace; }
button { font: inherit; padding: .15rem .6rem; cursor: pointer; }
.js-only { display: none; }
html.js .js-only { display: inline-flex; }
"""

# Refreshes the page's <main> every REFRESH_SECONDS (from data-refresh), unless
# the tab is hidden, the box is unticked, or the reader has a <details> open.
# The fetched page is parsed, not evaluated: scripts in it do not run.
JS = """
(function () {
  document.documentElement.classList.add("js");
  var main = document.querySelector("main[data-refresh]");
  if (!main) { return; }
  var seconds = parseFloat(main.getAttribute("data-refresh"));
  if (!(seconds > 0)) { return; }
  var box = document.getElementById("perfkit-autorefresh");
  function refresh() {
    if (document.hidden || (box && !box.checked) || main.querySelector("details[open]")) {
      return;
    }
    fetch(window.location.href, {credentials: "same-origin", headers: {"X-Perfkit-Refresh": "1"}})
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html").querySelector("main");
        if (fresh) { main.replaceChildren.apply(main, Array.from(fresh.childNodes)); }
      })
      .catch(function () {});
  }
  window.setInterval(refresh, seconds * 1000);
})();
"""
