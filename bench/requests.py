"""Requests per second under gunicorn: bare Django, perfkit, ddtrace, django-silk, the toolbar.

The demo site (``testproject``, 2,000 seeded articles) under ``gunicorn -w 4``
(sync workers) on loopback, against a private PostgreSQL (``fsync=off``) and
a private Redis, driven by ``wrk``. Two routes: ``/healthz`` (a view that
answers ``ok`` with no database or cache work) and ``/articles/`` (the
optimised article list: its count and page come from perfkit's ``.cache()``
in Redis, so every configuration serves them from the same warm cache).
Configurations (``bench/requests_settings.py``, ``DEBUG`` off unless said):

* ``bare``: no ``PerfkitMiddleware``. The ``django_perfkit`` app stays
  installed, because the article list is built with its ``.cache()``: the
  cache, and the query collector's idle execute wrapper, are in the
  baseline.
* ``perfkit``: the demo as shipped, ``PerfkitMiddleware`` first, production
  defaults (query guard in ``log`` mode, slow-request log, ``Server-Timing``
  for everyone), no profile requested.
* ``perfkit-guard-off``: the same with ``QUERY_GUARD["MODE"] = "off"``, to
  show what N+1 detection costs; only when ``BENCH_REQUESTS_CONFIGS`` names it
  (``make bench`` leaves it out, for time).
* ``ddtrace``: ``bare`` under ``ddtrace-run`` with its defaults, the agent URL
  pointing at a closed loopback port (traces are built, encoded and
  dropped; no agent takes CPU), telemetry and remote configuration off.
* ``silk``: ``bare`` plus django-silk's middleware (first) with its defaults:
  every request and its queries are written to the database.
* ``debug-toolbar``: ``bare`` plus django-debug-toolbar's middleware (first),
  with what it needs to run at all: ``DEBUG = True`` (so Django also keeps
  ``connection.queries``) and ``INTERNAL_IPS = ["127.0.0.1"]``; it is
  injected into the HTML of the article list.

Each configuration runs in a virtualenv of its own with the same pinned
Django, database and Redis clients as the project's (the competitor added).
Every configuration's gunicorn is started first and kept for all the rounds
(a server measured in its first seconds would be measured with its start-up);
then, in each round, for each route, the workers are warmed for
1 s, ``wrk -t2 -c16`` runs for 3 s, and ``wrk -t1 -c1`` for 1 s. The
16-connection run gives requests per second and the **server CPU time per
request**: the CPU time of gunicorn's processes, PostgreSQL's and Redis's
over the run (from ``/proc``), divided by the requests served. The
one-connection run gives the median latency of one request at a time, with
no queueing in it. "Added" is the median, over the rounds, of the difference
from ``bare``'s figure in the same round, and the ratio to ``bare`` the median
of the rounds' ratios. The configurations take turns round by round (2
rounds, the order rotated); the other columns are medians of the rounds.

Every response is checked: a configuration that answered anything but 2xx,
or lost connections, is marked invalid. gunicorn's sync workers close the
connection after each response, so every request includes a TCP connect on
loopback. The machine has 2 cores: the 4 workers, ``wrk``, PostgreSQL and
Redis share them, so req/s measures CPU per request more than concurrency,
and it is shared with other work, which the CPU time per request is less
disturbed by than req/s and latency (the notes say how much other work there
was). Requests carrying ``X-Perfkit-Profile`` are not measured here.

Run: ``python bench/requests.py`` (``make bench`` runs it and rewrites
docs/benchmarks.md). Needs ``wrk`` (``apt-get install wrk``).
``BENCH_REQUESTS_ROUNDS``, ``BENCH_REQUESTS_SECONDS`` (the 16-connection
measurement) and ``BENCH_REQUESTS_CONFIGS`` (comma-separated) change the
defaults.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ itself is first on sys.path: this file would shadow
# the ``requests`` library there.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench import site, venvs  # noqa: E402
from bench.cli import report  # noqa: E402
from bench.pgserver import PrivatePostgres  # noqa: E402
from bench.site import site_env  # noqa: E402
from tests.redis_servers import PrivateRedis, free_port  # noqa: E402

#: ``perfkit-guard-off`` (what N+1 detection costs) only when asked for, by
#: ``BENCH_REQUESTS_CONFIGS`` (a comma-separated list): make bench has a time budget.
CONFIGS = [
    c
    for c in os.environ.get(
        "BENCH_REQUESTS_CONFIGS", "bare,perfkit,ddtrace,silk,debug-toolbar"
    ).split(",")
    if c
]
ROUTES = {"trivial": "/healthz", "article list": "/articles/"}
WORKERS = 4
CONNECTIONS = 16
ROUNDS = int(os.environ.get("BENCH_REQUESTS_ROUNDS", "2"))
WARMUP_S = 1
THROUGHPUT_S = int(os.environ.get("BENCH_REQUESTS_SECONDS", "3"))
LATENCY_S = 1
DATABASE = "perfkit_bench"
GUNICORN = "gunicorn==27.0.1"
#: What each competitor adds to the common environment.
EXTRAS = {
    "ddtrace": ["ddtrace==4.16.0"],
    "silk": ["django-silk==5.6.0"],
    "debug-toolbar": ["django-debug-toolbar==8.0.0"],
}
#: Runtime packages pinned to the versions in the project's environment.
PINNED = [
    "Django",
    "django-ratelimit",
    "django-redis",
    "redis",
    "hiredis",
    "psycopg",
    "psycopg-binary",
    "pyinstrument",
]
#: Packages whose versions are shown.
SHOWN = ["Django", "gunicorn", "ddtrace", "django-silk", "django-debug-toolbar"]
TARGET_RATIO = 0.95
TARGET_ADDED_US = 50.0

#: wrk counts a status >= 400 as an error but not a 1xx or 3xx: count every non-2xx.
WRK_SCRIPT = """
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  non2xx = 0
end
function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end
function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("non2xx")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests": %d, "duration_us": %d, "bytes": %d, "non2xx": %d, '
    .. '"connect": %d, "read": %d, "write": %d, "timeout": %d, '
    .. '"p50_us": %.1f, "p90_us": %.1f, "p99_us": %.1f}\\n',
    summary.requests, summary.duration, summary.bytes, bad,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


def requirements(config: str) -> list[str] | None:
    pins = []
    for dist in PINNED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            pins.append(f"{dist}=={metadata.version(dist)}")
    return [GUNICORN, f"--editable={ROOT}[postgres,hiredis]", *pins, *EXTRAS.get(config, [])]


def venv_name(config: str) -> str:
    return f"gunicorn-{config}" if config in EXTRAS else "gunicorn"


def versions(python: str) -> dict[str, str]:
    code = (
        "import json, importlib.metadata as m\n"
        f"names = {SHOWN!r}\n"
        "out = {}\n"
        "for n in names:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _tail(text: str, lines: int = 1) -> str:
    return " / ".join(text.strip().splitlines()[-lines:]) or "failed"


class Server:
    """One configuration's gunicorn, its output appended to a log file."""

    def __init__(
        self, config: str, python: str, env: dict[str, str], log: Path, workers: int = WORKERS
    ) -> None:
        self.config = config
        self.port = free_port()
        self.log = log
        self.workers = workers
        command = [python, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{self.port}",
                   "--worker-tmp-dir", "/dev/shm", "--chdir", str(ROOT),
                   "testproject.wsgi"]  # fmt: skip
        if config == "ddtrace":
            command.insert(0, str(Path(python).parent / "ddtrace-run"))
        self.command = command
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command, env=self.env, cwd=ROOT, stdout=out, stderr=out,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {_tail(self.new_log(offset), 3)}")
            booted = self.new_log(offset).count("Booting worker")
            if booted >= self.workers and get(self.port, "/healthz")[0] == 200:
                return
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn did not start: {_tail(self.new_log(offset), 3)}")

    def new_log(self, offset: int) -> str:
        with self.log.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        conn.close()
    except OSError:
        return 0, {}, b""
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def wrk(
    port: int, path: str, script: Path, seconds: int, connections: int, timeout_s: int = 2
) -> dict[str, Any]:
    """One ``wrk`` run; its script prints a ``BENCHJSON {...}`` line, returned as a dict.

    ``timeout_s``: wrk's own per-request timeout (a request slower than that is
    counted as a timeout, not as a response).
    """
    threads = min(2, connections)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout",
         f"{timeout_s}s", "-s", str(script), f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, timeout=seconds + timeout_s + 60,
    )  # fmt: skip
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCHJSON ")), None)
    if line is None:
        return {"error": _tail(out.stderr or out.stdout)}
    data: dict[str, Any] = json.loads(line.split(" ", 1)[1])
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    return data


def preflight(port: int, path: str) -> dict[str, Any]:
    status, headers, body = get(port, path)
    return {
        "status": status,
        "bytes": len(body),
        "server_timing": headers.get("server-timing", ""),
        "toolbar": b'id="djDebug"' in body,
        "perfkit_headers": sorted(h for h in headers if h.startswith("x-perfkit")),
    }


def read_log(log: Path) -> dict[str, Any]:
    """The lines a configuration's servers wrote besides gunicorn's own start and stop."""
    if not log.exists():
        return {"lines": 0, "tracebacks": 0, "sample": []}
    lines = log.read_text(errors="replace").splitlines()
    own = [ln for ln in lines if "[INFO]" not in ln and ln.strip()]
    sample = list(dict.fromkeys(ln[:200] for ln in own))[:5]
    tracebacks = sum("Traceback" in ln for ln in own)
    return {"lines": len(own), "tracebacks": tracebacks, "sample": sample}


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def tree_cpu(roots: list[int]) -> float:
    """CPU seconds of ``roots`` and their descendants (exited ones once reaped) from /proc."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        # utime, stime, and cutime, cstime: the reaped children's.
        ticks[pid] = sum(int(x) for x in fields[11:15])
    members = {pid for pid in roots if pid in ticks}
    grew = True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in members} - members
        members |= more
        grew = bool(more)
    return sum(ticks[pid] for pid in members) / _TICK


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / _TICK  # less idle and iowait


def measure(
    port: int, path: str, script: Path, seconds: int, connections: int, app: int, backend: list[int]
) -> dict[str, Any]:
    """``wrk``, and the CPU time it cost the app server, PostgreSQL and Redis, and others."""
    app0, backend0, busy0 = tree_cpu([app]), tree_cpu(backend), machine_busy()
    client0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    data = wrk(port, path, script, seconds, connections)
    wall = time.monotonic() - started
    client1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    app_s, backend_s = tree_cpu([app]) - app0, tree_cpu(backend) - backend0
    client_s = client1.ru_utime + client1.ru_stime - client0.ru_utime - client0.ru_stime
    requests = data.get("requests") or 0
    if requests:
        data["app_cpu_us"] = app_s / requests * 1e6
        data["backend_cpu_us"] = backend_s / requests * 1e6
    # Whatever else ran meanwhile, in cores: other sessions' work on this machine.
    data["others_cores"] = (machine_busy() - busy0 - app_s - backend_s - client_s) / wall
    return data


def psql(pg: PrivatePostgres, sql: str) -> str:
    try:
        return pg.psql(DATABASE, sql)
    except RuntimeError as exc:
        return f"error: {exc}"


def run() -> dict[str, Any]:
    if shutil.which("wrk") is None:
        return {"error": "wrk is not installed (apt-get install wrk)"}
    errors: dict[str, str] = {}
    pythons: dict[str, str] = {}
    for config in CONFIGS:
        try:
            pythons[config] = venvs.python_for(venv_name(config), requirements(config))
        except subprocess.CalledProcessError:
            errors[config] = f"pip could not install {' '.join(requirements(config) or [])}"
    results: dict[str, Any] = {
        "configs": CONFIGS,
        "routes": ROUTES,
        "rounds": ROUNDS,
        "workers": WORKERS,
        "connections": CONNECTIONS,
        "seconds": {"warmup": WARMUP_S, "throughput": THROUGHPUT_S, "latency": LATENCY_S},
        "versions": {config: versions(python) for config, python in pythons.items()},
        "errors": errors,
    }
    # Stopped from outside: still stop the servers (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    pg, redis = PrivatePostgres(), PrivateRedis()
    tmp = Path(tempfile.mkdtemp(prefix="perfkit-bench-requests-"))
    servers: list[Server] = []
    try:
        pg.start()
        redis.start()
        assert redis.proc is not None
        redis_pid = redis.proc.pid
        postmaster = int((pg.dir / "data" / "postmaster.pid").read_text().split()[0])
        base = site_env("bench.requests_settings", pg, DATABASE, redis.url)
        envs = {config: {**base, "BENCH_CONFIG": config} for config in pythons}
        if "ddtrace" in envs:
            envs["ddtrace"].update(
                DD_TRACE_AGENT_URL=f"http://127.0.0.1:{free_port()}",  # nothing listens
                DD_INSTRUMENTATION_TELEMETRY_ENABLED="false",
                DD_REMOTE_CONFIGURATION_ENABLED="false",
                DD_SERVICE="perfkit-bench",
            )
        site.prepare({**base, "BENCH_CONFIG": "bare"})
        for config in list(pythons):
            # Each configuration's own tables (silk's), and a check that it loads.
            out = site.manage(pythons[config], envs[config], "migrate", "--noinput")
            if out.returncode != 0:
                errors[config] = f"manage.py migrate failed: {_tail(out.stderr)}"
                del pythons[config]
        script = tmp / "count.lua"
        script.write_text(WRK_SCRIPT)
        live = [c for c in CONFIGS if c in pythons]
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            c: {r: [] for r in ROUTES} for c in live
        }
        single: dict[str, dict[str, list[dict[str, Any]]]] = {
            c: {r: [] for r in ROUTES} for c in live
        }
        checks: dict[str, dict[str, Any]] = {}
        # Every configuration's server is started once and kept for all the rounds:
        # a server measured in its first seconds is measured with its start-up.
        started: dict[str, Server] = {}
        for config in live:
            print(f"bench: starting {config} ...", file=sys.stderr, flush=True)
            server = Server(config, pythons[config], envs[config], tmp / f"{config}.log")
            servers.append(server)
            try:
                server.start()
            except RuntimeError as exc:
                errors[config] = str(exc)
                server.stop()
                continue
            started[config] = server
        for r in range(ROUNDS):
            order = live[r % len(live) :] + live[: r % len(live)]
            for config in order:
                if config not in started:
                    continue
                print(f"bench: round {r + 1}/{ROUNDS}: {config} ...", file=sys.stderr, flush=True)
                server = started[config]
                assert server.proc is not None
                meter = (server.proc.pid, [postmaster, redis_pid])
                for route, path in ROUTES.items():
                    if config not in checks or route not in checks[config]:
                        checks.setdefault(config, {})[route] = preflight(server.port, path)
                    wrk(server.port, path, script, WARMUP_S, CONNECTIONS)
                    many = measure(server.port, path, script, THROUGHPUT_S, CONNECTIONS, *meter)
                    one = wrk(server.port, path, script, LATENCY_S, 1)
                    runs[config][route].append({**many, "round": r})
                    single[config][route].append({**one, "round": r})
        results["throughput"] = runs
        results["single"] = single
        results["preflight"] = checks
        results["logs"] = {c: read_log(tmp / f"{c}.log") for c in live}
        if "silk" in live:
            results["silk_rows"] = {
                "requests": psql(pg, "SELECT count(*) FROM silk_request"),
                "queries": psql(pg, "SELECT count(*) FROM silk_sqlquery"),
            }
    finally:
        for server in servers:
            server.stop()
        redis.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def _median(samples: list[dict[str, Any]], key: str) -> float | None:
    values = [s[key] for s in samples if key in s]
    return statistics.median(values) if values else None


def _paired(
    samples: list[dict[str, Any]], base: list[dict[str, Any]], key: str, *, ratio: bool = False
) -> float | None:
    """The median over rounds of the difference from (or ratio to) bare in the same round."""
    baseline = {s["round"]: s[key] for s in base if s.get(key)}
    pairs = [(s[key], baseline[s["round"]]) for s in samples if key in s and s["round"] in baseline]
    values = [a / b if ratio else a - b for a, b in pairs]
    return statistics.median(values) if values else None


def _bad(samples: list[dict[str, Any]]) -> list[str]:
    """What makes these runs invalid: non-2xx answers, socket errors, wrk failures."""
    problems = []
    for key, label in (("non2xx", "non-2xx"), ("connect", "connect errors"),
                       ("read", "read errors"), ("write", "write errors"),
                       ("timeout", "timeouts")):  # fmt: skip
        total = sum(s.get(key, 0) for s in samples)
        if total:
            problems.append(f"{total:,} {label}")
    failed = [s["error"] for s in samples if "error" in s]
    if failed:
        problems.append(f"wrk failed: {failed[0]}")
    return problems


def _label(config: str, versions: dict[str, str]) -> str:
    package = {"ddtrace": "ddtrace", "silk": "django-silk", "debug-toolbar": "django-debug-toolbar"}
    version = versions.get(package.get(config, ""), "")
    return f"{config} {version}".strip()


def table(results: dict[str, Any]) -> str:
    if "error" in results:
        return f"Not run: {results['error']}."
    runs, single = results.get("throughput", {}), results.get("single", {})
    all_versions = results.get("versions", {})
    conns = results["connections"]
    lines = [
        f"### gunicorn, {results['workers']} sync workers, `wrk` on loopback "
        f"(medians of {results['rounds']} interleaved rounds)",
        "",
        f"| route | configuration | req/s, {conns} conns | range | ratio to bare "
        "| server CPU / request | added | p50 latency, 1 conn | added | bytes / response "
        "| valid |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary: dict[str, dict[str, Any]] = {}
    for route, path in results["routes"].items():
        base_runs = runs.get("bare", {}).get(route, [])
        base_single = single.get("bare", {}).get(route, [])
        for config in results["configs"]:
            label = _label(config, all_versions.get(config, {}))
            if config not in runs:
                error = results["errors"].get(config, "did not run")
                lines.append(f"| {route} (`{path}`) | {label} | did not run: {error} "
                             "| | | | | | | | |")  # fmt: skip
                continue
            many, one = runs[config][route], single[config][route]
            for sample in many:
                if "app_cpu_us" in sample:
                    sample["cpu_us"] = sample["app_cpu_us"] + sample["backend_cpu_us"]
            problems = _bad(many + one)
            if config in results["errors"]:
                problems.append(results["errors"][config])
            rps_values = [s["rps"] for s in many if "rps" in s]
            requests = sum(s.get("requests", 0) for s in many)
            size = sum(s.get("bytes", 0) for s in many) / requests if requests else 0
            row = {
                "spread": _spread(many, "cpu_us"),
                "ratio": _paired(many, base_runs, "rps", ratio=True),
                "cpu": _paired(many, base_runs, "cpu_us"),
                "latency": _paired(one, base_single, "p50_us"),
                "valid": not problems,
            }
            summary.setdefault(config, {})[route] = row
            rng = f"{min(rps_values):,.0f}–{max(rps_values):,.0f}" if rps_values else ""
            cpu, backend = _median(many, "cpu_us"), _median(many, "backend_cpu_us")
            cpu_cell = "n/a" if cpu is None else f"{cpu:,.0f} µs (PG, Redis: {backend:,.0f})"
            bare = config == "bare"
            lines.append(
                f"| {route} (`{path}`) | {label} | {_n(_median(many, 'rps'))} | {rng} "
                f"| {_ratio(row['ratio'])} | {cpu_cell} | {'–' if bare else _us(row['cpu'])} "
                f"| {_ms(_median(one, 'p50_us'))} | {'–' if bare else _us(row['latency'])} "
                f"| {size:,.0f} "
                f"| {'✓' if not problems else '**invalid**: ' + '; '.join(problems)} |"
            )
    lines += ["", *_targets(summary), *_notes(results)]
    return "\n".join(lines)


def _n(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}×"


def _ms(us: float | None) -> str:
    return "n/a" if us is None else f"{us / 1000:,.2f} ms"


def _us(us: float | None) -> str:
    return "n/a" if us is None else f"{us:+,.0f} µs"


def _targets(summary: dict[str, dict[str, Any]]) -> list[str]:
    perfkit, bare = summary.get("perfkit", {}), summary.get("bare", {})
    listing = perfkit.get("article list")
    valid = bool(listing and listing["valid"] and bare.get("article list", {}).get("valid"))
    if not valid or listing is None or listing["ratio"] is None:
        return ["Targets: cannot say (perfkit or bare did not give valid runs).", ""]
    ratio = listing["ratio"]
    lines = [
        f"Targets: perfkit serves the article list at {ratio:.2f}× bare Django's req/s "
        f"(target ≥ {TARGET_RATIO}×): **{'met' if ratio >= TARGET_RATIO else 'not met'}**."
    ]
    cpu = {route: row["cpu"] for route, row in perfkit.items() if row["cpu"] is not None}
    latency = {
        route: row["latency"] for route, row in perfkit.items() if row["latency"] is not None
    }
    if cpu:
        met = "met" if max(cpu.values()) <= TARGET_ADDED_US else "not met"
        lines.append(
            f"Added per request: server CPU {_each(cpu)}; median latency at 1 connection "
            f"{_each(latency)} (target ≤ {TARGET_ADDED_US:.0f} µs, judged on the CPU time, "
            f"which other work on the machine disturbs less): **{met}**."
        )
        spread = {r: row["spread"] for r, row in bare.items() if row["spread"] is not None}
        if spread:
            lines.append(
                f"Bare Django's own CPU time per request varied by {_each(spread, sign='')} "
                "from round to round: smaller differences are noise."
            )
    return [" ".join(lines), ""]


def _each(values: dict[str, float], sign: str = "+") -> str:
    return ", ".join(f"{route} {us:{sign},.0f} µs" for route, us in values.items())


def _spread(samples: list[dict[str, Any]], key: str) -> float | None:
    values = [s[key] for s in samples if key in s]
    return max(values) - min(values) if len(values) > 1 else None


def _notes(results: dict[str, Any]) -> list[str]:
    notes = []
    others = [
        s["others_cores"]
        for routes in results.get("throughput", {}).values()
        for samples in routes.values()
        for s in samples
        if "others_cores" in s
    ]
    if others:
        median, worst = statistics.median(others), max(others)
        warning = ": the figures are noisier than usual" if median > 0.15 else ""
        notes.append(
            f"- Other processes on the machine used {median:.2f} cores (median; at most "
            f"{worst:.2f}) of its {os.cpu_count()} during the {results['connections']}"
            f"-connection measurements{warning}."
        )
    for config, check in results.get("preflight", {}).items():
        for route, c in check.items():
            if c["status"] != 200:
                notes.append(f"- {config}, {route}: the first request answered {c['status']}.")
        if config == "debug-toolbar":
            shown = "is" if check.get("article list", {}).get("toolbar") else "is **not**"
            notes.append(f"- debug-toolbar: the toolbar {shown} in the article list's HTML.")
    rows = results.get("silk_rows")
    if rows:
        notes.append(
            f"- silk: {rows['requests']} requests and {rows['queries']} queries in its tables "
            "at the end (it keeps at most 10,000 requests; the article list's queries are "
            "cached, so there are none to record)."
        )
    for config, log in results.get("logs", {}).items():
        if log["lines"]:
            sample = "; ".join(f"`{ln}`" for ln in log["sample"][:1]).replace("|", "\\|")
            notes.append(
                f"- {config}: {log['lines']:,} server log lines besides gunicorn's own "
                f"({log['tracebacks']} tracebacks), e.g. {sample}"
            )
    for config, error in results.get("errors", {}).items():
        notes.append(f"- {config}: {error}")
    return ["Notes:", "", *notes, ""] if notes else []


if __name__ == "__main__":
    report(run, table)
