"""Whole-stack load: the demo's hot routes as plain Django, with perfkit, and with its caches.

The demo site (``testproject``, 2,000 seeded articles, 20,000 comments) under
``gunicorn -w 4`` (sync workers) on loopback, against a private PostgreSQL
(``fsync=off``, with ``pg_stat_statements`` to count the queries) and a
private Redis, driven by ``wrk -c16``. Configurations
(``bench/stack_settings.py``):

* ``bare``: the demo's code with perfkit switched off (no middleware,
  ``ENABLED`` and ``RATELIMIT_ENABLE`` off, so nothing is cached and no limit is
  checked): plain Django.
* ``perfkit``: everything on but caching: the middleware with its production
  defaults, the demo's rate limits, ``CACHE["ENABLED"] = False``.
* ``perfkit-cache``: the demo as shipped: ``.cache()`` and cache on write serve
  the hot views from Redis; on the article list, the rendered rows are a
  ``{% cached_as %}`` fragment under the same version tokens.

Routes: the article list (``/articles/``, count, page, tags and comment
counts), an article's page (``/articles/<slug>/``: the article with its
author, category and tags, its comments, and one ``UPDATE`` of its view
counter, which no cache can save), the JSON API (``/api/articles/``,
rate-limited at a rate the load never reaches, so every request is checked),
and the login under a password-guessing burst (``POST /login/`` with a wrong
password, from one client: plain Django runs the password hasher for every
attempt; with perfkit the demo's limits, 20 attempts a minute per IP and 5 per
username, answer the rest with 429 before the hasher runs).

Each configuration's gunicorn is started once and kept; then two rounds, the
configurations taking turns, the order rotated; for each route the workers
are warmed for 1 s, then ``wrk`` runs for 3 s; after each run the requests
wrk left queued are served before the next one starts. Reported: requests
per second and its ratio to ``bare`` (the median of the rounds' ratios), p50
and p99 latency at 16 connections (queueing included), the statuses, and the
**database queries per request**, counted by PostgreSQL
(``pg_stat_statements``: the statements the site sent for 20 requests sent
one at a time after the warm-up, divided by 20).

Run: ``python bench/stack.py`` (``make bench`` runs it and rewrites
docs/benchmarks.md). Needs ``wrk``. ``BENCH_STACK_ROUNDS`` changes the rounds.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# As a script, bench/ is first on sys.path, where bench/requests.py would
# shadow the ``requests`` library for anything that imports it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench import requests as requests_bench  # noqa: E402
from bench import site, venvs  # noqa: E402
from bench.cli import report  # noqa: E402
from bench.pgserver import PrivatePostgres  # noqa: E402
from bench.requests import (  # noqa: E402
    WORKERS,
    Server,
    requirements,
    tree_cpu,
    venv_name,
    versions,
)
from bench.site import site_env  # noqa: E402
from tests.redis_servers import PrivateRedis  # noqa: E402

CONFIGS = ["bare", "perfkit", "perfkit-cache"]
ROUTES = ["article list", "article page", "JSON API", "login burst"]
ROUNDS = int(os.environ.get("BENCH_STACK_ROUNDS", "2"))
CONNECTIONS = 16
WARMUP_S = 1
SECONDS = 3
DATABASE = "perfkit_stack"
SETTINGS = "bench.stack_settings"
QUERY_SAMPLE = 20
TARGET_INSTRUMENTED = 0.95
TARGET_CACHED = 3.0

#: wrk: a status histogram and latency percentiles, as one JSON line. The
#: login burst also sets the method, body and headers (``BENCH_POST``).
WRK_SCRIPT = """
local threads = {}
%(post)s
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  statuses = {}
end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    local s = thread:get("statuses")
    for code, n in pairs(s) do
      merged[code] = (merged[code] or 0) + n
    end
  end
  local parts = {}
  for code, n in pairs(merged) do
    table.insert(parts, string.format('"%%d": %%d', code, n))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests": %%d, "duration_us": %%d, "connect": %%d, "read": %%d, '
    .. '"write": %%d, "timeout": %%d, "p50_us": %%.1f, "p99_us": %%.1f, "statuses": {%%s}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), table.concat(parts, ", ")))
end
"""

#: A wrong password for a user that does not exist (Django still runs the hasher).
LOGIN_FIELDS = "username=bench-guess&password=wrong"
POST = """
wrk.method = "POST"
wrk.body = "csrfmiddlewaretoken=%(token)s&%(fields)s"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Cookie"] = "csrftoken=%(cookie)s"
"""


def wrk(port: int, path: str, script: Path, seconds: int) -> dict[str, Any]:
    # A login attempt that runs the password hasher takes seconds under this load.
    return requests_bench.wrk(port, path, script, seconds, CONNECTIONS, timeout_s=30)


def statements(pg: PrivatePostgres) -> int:
    """Statements the database has run so far (not counting this query itself)."""
    return int(pg.psql(DATABASE, "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements"))


def get(port: int, path: str, timeout: float = 120) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        conn.close()


def drain(port: int) -> None:
    """Wait until the requests wrk left behind are served: a cut run's queued requests
    would otherwise be served (and counted) during the next run."""
    for _ in range(2 * WORKERS):
        get(port, "/healthz")


def queries_per_request(
    pg: PrivatePostgres, port: int, path: str, post: tuple[str, str] | None
) -> float:
    """Statements PostgreSQL ran per request, over ``QUERY_SAMPLE`` requests one at a time.

    ``post``: (cookie header, form body) to ``POST`` instead of ``GET``.
    """
    before = statements(pg)
    for _ in range(QUERY_SAMPLE):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        if post is None:
            conn.request("GET", path)
        else:
            cookie, body = post
            headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie}
            conn.request("POST", path, body, headers)
        conn.getresponse().read()
        conn.close()
    # Less the first read of pg_stat_statements (counted once it had run).
    return (statements(pg) - before - 1) / QUERY_SAMPLE


def csrf(port: int) -> tuple[str, str]:
    """A CSRF cookie and a form token for it, from the login page."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/login/")
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    cookie = re.search(r"csrftoken=([^;]+)", response.getheader("Set-Cookie") or "")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', body)
    if cookie is None or token is None:
        raise RuntimeError("no CSRF token on the login page")
    return cookie.group(1), token.group(1)


def run() -> dict[str, Any]:
    if shutil.which("wrk") is None:
        return {"error": "wrk is not installed (apt-get install wrk)"}
    python = venvs.python_for(venv_name("perfkit"), requirements("perfkit"))
    results: dict[str, Any] = {
        "configs": CONFIGS,
        "routes": ROUTES,
        "rounds": ROUNDS,
        "workers": WORKERS,
        "connections": CONNECTIONS,
        "seconds": SECONDS,
        "versions": versions(python),
        "loadavg": [os.getloadavg()[0]],
    }
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = time.monotonic()
    pg = PrivatePostgres(
        "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=top"
        " -c pg_stat_statements.track_utility=off"
    )
    redis = PrivateRedis()
    tmp = Path(tempfile.mkdtemp(prefix="perfkit-bench-stack-"))
    servers: list[Server] = []
    try:
        pg.start()
        redis.start()
        postmaster = int((pg.dir / "data" / "postmaster.pid").read_text().split()[0])
        assert redis.proc is not None
        backend = [postmaster, redis.proc.pid]
        base = site_env(SETTINGS, pg, DATABASE, redis.url)
        site.prepare({**base, "BENCH_CONFIG": "bare"})
        pg.psql(DATABASE, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        slug = pg.psql(
            DATABASE,
            "SELECT slug FROM news_article WHERE is_published ORDER BY published_at DESC LIMIT 1",
        )
        paths = {
            "article list": "/articles/",
            "article page": f"/articles/{slug}/",
            "JSON API": "/api/articles/",
            "login burst": "/login/",
        }
        results["paths"] = paths
        scripts = {route: tmp / f"{i}.lua" for i, route in enumerate(ROUTES)}
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            c: {r: [] for r in ROUTES} for c in CONFIGS
        }
        queries: dict[str, dict[str, float]] = {c: {} for c in CONFIGS}
        # Each server is started once and kept for all the rounds (a server measured
        # in its first seconds would be measured with its start-up).
        started: dict[str, Server] = {}
        forms: dict[str, tuple[str, str]] = {}
        for config in CONFIGS:
            server = Server(config, python, {**base, "BENCH_CONFIG": config}, tmp / f"{config}.log")
            servers.append(server)
            server.start()
            started[config] = server
            forms[config] = csrf(server.port)
        for r in range(ROUNDS):
            for config in CONFIGS[r % len(CONFIGS) :] + CONFIGS[: r % len(CONFIGS)]:
                print(f"bench: round {r + 1}/{ROUNDS}: {config} ...", file=sys.stderr, flush=True)
                server = started[config]
                assert server.proc is not None
                cookie, token = forms[config]
                for route in ROUTES:
                    login = "login" in route
                    lua = POST % {"token": token, "cookie": cookie, "fields": LOGIN_FIELDS}
                    if not login:
                        lua = ""
                    scripts[route].write_text(WRK_SCRIPT % {"post": lua})
                    form = (
                        (f"csrftoken={cookie}", f"csrfmiddlewaretoken={token}&{LOGIN_FIELDS}")
                        if login
                        else None
                    )
                    wrk(server.port, paths[route], scripts[route], WARMUP_S)
                    drain(server.port)
                    if r == 0:  # the same in every round: counted once, warm, one at a time
                        queries[config][route] = queries_per_request(
                            pg, server.port, paths[route], form
                        )
                    app0, backend0 = tree_cpu([server.proc.pid]), tree_cpu(backend)
                    data = wrk(server.port, paths[route], scripts[route], SECONDS)
                    drain(server.port)
                    done = data.get("requests") or 0
                    if done:
                        data["app_cpu_us"] = (tree_cpu([server.proc.pid]) - app0) / done * 1e6
                        data["backend_cpu_us"] = (tree_cpu(backend) - backend0) / done * 1e6
                    runs[config][route].append({**data, "round": r})
        results["runs"] = runs
        results["queries"] = queries
    finally:
        for server in servers:
            server.stop()
        redis.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    results["loadavg"].append(os.getloadavg()[0])
    results["wall_s"] = round(time.monotonic() - began, 1)
    return results


# -- the table --------------------------------------------------------------------------


def _median(samples: list[dict[str, Any]], key: str) -> float | None:
    values = [s[key] for s in samples if s.get(key) is not None]
    return statistics.median(values) if values else None


def _ratio(runs: dict[str, Any], config: str, route: str) -> float | None:
    """The median over the rounds of the ratio to ``bare`` in the same round."""
    base = {s["round"]: s.get("rps") for s in runs["bare"][route]}
    ratios = [
        s["rps"] / base[s["round"]]
        for s in runs[config][route]
        if s.get("rps") and base.get(s["round"])
    ]
    return statistics.median(ratios) if ratios else None


def _statuses(samples: list[dict[str, Any]]) -> str:
    total: dict[str, int] = {}
    for s in samples:
        for code, n in s.get("statuses", {}).items():
            total[code] = total.get(code, 0) + n
    errors = sum(s.get(k, 0) for s in samples for k in ("connect", "read", "write", "timeout"))
    whole = sum(total.values()) or 1
    cells = [f"{code} {100 * n / whole:.0f}%" for code, n in sorted(total.items())]
    failed = [s["error"] for s in samples if "error" in s]
    if errors:
        cells.append(f"{errors} socket errors")
    if failed:
        cells.append(f"wrk failed: {failed[0]}")
    return ", ".join(cells)


def _ms(us: float | None) -> str:
    return "n/a" if us is None else f"{us / 1000:,.1f} ms"


def table(results: dict[str, Any]) -> str:
    if "runs" not in results:
        return f"Not run: {results.get('error', 'no results')}."
    runs = results["runs"]
    lines = [
        f"### gunicorn, {results['workers']} sync workers, `wrk -c{results['connections']}` "
        f"(medians of {results['rounds']} interleaved rounds of {results['seconds']} s)",
        "",
        "| route | configuration | req/s | ratio to bare | p50 | p99 | queries / request "
        "| server CPU / request | statuses |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for route in results["routes"]:
        for config in results["configs"]:
            samples = runs[config][route]
            rps, ratio = _median(samples, "rps"), _ratio(runs, config, route)
            queries = results["queries"][config].get(route)
            cpu = _median(samples, "app_cpu_us")
            backend = _median(samples, "backend_cpu_us")
            cpu_cell = "n/a" if cpu is None or backend is None else _ms(cpu + backend)
            lines.append(
                f"| {route if config == results['configs'][0] else ''} | {config} "
                f"| {'n/a' if rps is None else f'{rps:,.0f}'} "
                f"| {'n/a' if ratio is None else f'{ratio:.2f}×'} "
                f"| {_ms(_median(samples, 'p50_us'))} | {_ms(_median(samples, 'p99_us'))} "
                f"| {'n/a' if queries is None else f'{queries:.2f}'} | {cpu_cell} "
                f"| {_statuses(samples)} |"
            )
    lines += ["", *_targets(runs), *_notes(results)]
    return "\n".join(lines)


def _targets(runs: dict[str, Any]) -> list[str]:
    instrumented = _ratio(runs, "perfkit", "article list")
    cached = _ratio(runs, "perfkit-cache", "article list")
    lines = ["Targets, article list:", ""]
    for label, value, target in (
        ("perfkit's instrumentation alone", instrumented, TARGET_INSTRUMENTED),
        ("perfkit with its caches on the hot views", cached, TARGET_CACHED),
    ):
        if value is None:
            lines.append(f"- {label}: not measured.")
            continue
        met = "met" if value >= target else "**not met**"
        lines.append(f"- {label}: {value:.2f}× bare Django (target ≥ {target:g}×): {met}.")
    return [*lines, ""]


def _notes(results: dict[str, Any]) -> list[str]:
    notes = [
        "- Server CPU / request: gunicorn's processes, PostgreSQL's and Redis's CPU time "
        "over the run (from `/proc`), divided by the requests served.",
        "- Queries / request: statements PostgreSQL ran (`pg_stat_statements`, utility "
        f"statements not counted) for {QUERY_SAMPLE} requests sent one at a time after the "
        f"warm-up (first round), divided by {QUERY_SAMPLE}.",
    ]
    load = results.get("loadavg", [])
    if len(load) == 2:
        notes.append(
            f"- Load average ({os.cpu_count()} cores): {load[0]:.1f} at the start, "
            f"{load[1]:.1f} at the end; the servers, PostgreSQL, Redis and wrk share them."
        )
    if "wall_s" in results:
        notes.append(f"- The whole script took {results['wall_s']:.0f} s.")
    return ["Notes:", "", *notes, ""]


if __name__ == "__main__":
    report(run, table)
