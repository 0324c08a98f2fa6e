"""Faults under load: Redis stopped, Redis black-holed, PostgreSQL locked, on the demo site.

The demo site (``testproject``, 2,000 seeded articles, perfkit on as the demo
ships it: ``bench/faults_settings.py``) under ``gunicorn -w 4`` (sync
workers), on a private PostgreSQL and a private Redis, loaded from loopback
with 16 connections that cycle through three routes: the article list
(``/articles/``: its count and page from ``.cache()``, its comment counts
from cache on write), the JSON API (``/api/articles/``: cached, and
rate-limited by the demo's ``@ratelimit``) and search (``/search/?q=the``:
uncached queries, rate-limited too). Both limits keep the default failure
policy, ``fail="open"``, at a rate the load never reaches, so every request
of theirs still asks Redis. Each fault gets a fresh gunicorn and runs
``2 s`` of warm-up, ``4 s`` before the fault, ``10 s`` of fault and ``10 s``
after it:

* **Redis stopped**: the Redis process is stopped and, 10 s later, started
  again on the same port (empty: it runs without persistence).
* **Redis black-holed**: perfkit reaches Redis through a local TCP proxy
  that forwards; during the fault it stops reading from every socket and
  accepts new connections without ever answering, as across a network
  partition (its baseline is measured through the proxy too).
* **PostgreSQL locked**: a session holds ``ACCESS EXCLUSIVE`` on
  ``news_article`` for 10 s: every query of that table waits. Cached reads
  need no query, but search does, and four sync workers stuck in search
  leave none for the rest: this stall is the database's, not perfkit's.

The load generator is a small asyncio client in its own process rather than
``wrk``: it records each request's start, end, status and ``Server-Timing``
header, so a request that waits across a phase boundary (the whole of the
PostgreSQL fault) is counted in the phase it started in, not cut off when a
``wrk`` run ends. It is a closed loop, as ``wrk`` is: a stalled server is
sent fewer requests. Latency is the client's (it includes queueing for a
worker, most of it here: 16 connections share 4 workers);
"server" is perfkit's own ``total`` from ``Server-Timing``; "without Redis"
counts responses whose ``Server-Timing`` reports failed or skipped Redis
calls (a request sent just before a fault starts or ends can be served after
it: it waited for a worker); "other work" is the CPU that processes outside
this run used meanwhile (from ``/proc``; the machine is shared, and when
others take a core the site's latency doubles). "Recovered" is the end of the first 1-second slice
after the fault whose median latency is within 1.5× the median before it,
with no 5xx. gunicorn's log is read for worker timeouts, restarts, tracebacks
(with ``DEBUG`` off, ``django.request`` errors are logged there) and the
circuit breaker's warnings, and at ``DEBUG`` for each of perfkit's Redis
calls that failed (those the open breaker skips are not logged). Each fault
runs once: the figures are one run's, on a shared machine.

Stale reads: during each Redis fault, and 3 s after it ends, a separate
process (``manage.py shell``, the same settings and Redis address as the
site) changes the title of the newest article through the ORM; from the
first write on, ``/articles/`` is fetched every 0.1 s, and a read is stale
if it started after a write had returned and does not show that title. The
first write's token bump cannot reach Redis and is lost with its process,
which is the hard case: after a black hole Redis still holds the entries.
Rate limits: before, during (5 s in) and after (7 s after) each fault, 8
requests from a fresh client to two route rules of 5 a minute, one
``fail="open"`` (the login page) and one ``fail="closed"`` (the async JSON
API); ``"closed"`` answers 503 while Redis cannot be asked, by design.

Run: ``python bench/faults.py`` (``make bench`` runs it and rewrites
docs/benchmarks.md); about two minutes. ``BENCH_FAULTS`` (a
comma-separated subset of ``redis-stop,redis-blackhole,pg-lock``) runs fewer.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# As a script, bench/ is first on sys.path, where bench/requests.py would
# shadow the ``requests`` library for anything that imports it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench import site, venvs  # noqa: E402
from bench.cli import report  # noqa: E402
from bench.pgserver import PrivatePostgres  # noqa: E402
from bench.requests import (  # noqa: E402
    WORKERS,
    Server,
    machine_busy,
    requirements,
    tree_cpu,
    venv_name,
    versions,
)
from bench.site import manage, site_env  # noqa: E402
from tests.redis_servers import PrivateRedis  # noqa: E402

FAULTS = {
    "redis-stop": "Redis stopped",
    "redis-blackhole": "Redis black-holed",
    "pg-lock": "PostgreSQL locked",
}
ROUTES = {"article list": "/articles/", "JSON API": "/api/articles/", "search": "/search/?q=the"}
CONNECTIONS = 16
WARMUP_S = 2.0
BEFORE_S = 4.0
FAULT_S = 10.0
AFTER_S = 10.0
#: When the writes, probes and samples happen, in seconds from the fault's start or end.
WRITE_DURING_S = 1.0
PROBE_DURING_S = 5.0
WRITE_AFTER_S = 3.0
PROBE_AFTER_S = 7.0
SAMPLE_EVERY_S = 0.1
PROBE_REQUESTS = 8
PROBE_SLOW_S = 3.0
#: The two route rules of bench/faults_settings.py the probes are sent to (not imported
#: from there: importing the demo's settings probes ports and prints).
PROBE_LIMIT = 5
PROBE_HEADER = "x-fault-client"
PROBE_OPEN_PATH = "/login/"
PROBE_CLOSED_PATH = "/api/articles/async/"
#: Recovered: a 1-second slice whose median latency is within this factor of the baseline's.
SLICE_S = 1.0
RECOVERY_FACTOR = 1.5
TIMELINE_SLICE_S = 2.0
#: gunicorn's default worker timeout: no request of the load waits longer.
REQUEST_TIMEOUT_S = 30.0
DATABASE = "perfkit_faults"
LOCKED_TABLE = "news_article"
SETTINGS = "bench.faults_settings"
WRITE_CODE = """
import time
from testproject.news.models import Article
article = Article.objects.published().newest_first().first()
article.title = {title!r}
article.save(update_fields=["title"])
print("WROTE", time.monotonic())
"""


# -- HTTP: one request per connection, as gunicorn's sync workers answer ---------------

_TOTAL = re.compile(rb"total;dur=([0-9.]+)")
_REDIS_FAILURES = re.compile(rb'redis-failures;desc="?([0-9]+)')


async def request(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes, bytes]:
    """``GET path``: (status, head, body); status 0 if no response came."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    raw = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{extra}\r\n"
    writer = None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), REQUEST_TIMEOUT_S
        )
        writer.write(raw.encode())
        data = await asyncio.wait_for(reader.read(), REQUEST_TIMEOUT_S)
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head[9:12]), head, body
    except (OSError, ValueError, asyncio.TimeoutError):
        return 0, b"", b""
    finally:
        if writer is not None:
            writer.close()


def server_timing(head: bytes) -> tuple[float | None, int]:
    """perfkit's ``total`` (ms) and the Redis calls that failed or were skipped."""
    total, failures = _TOTAL.search(head), _REDIS_FAILURES.search(head)
    return (
        float(total.group(1)) if total else None,
        int(failures.group(1)) if failures else 0,
    )


async def _connection(port: int, first: int, until: float, out: list[list[Any]]) -> None:
    paths = list(ROUTES.values())
    n = first
    while time.monotonic() < until:
        route = n % len(paths)
        n += 1
        started = time.monotonic()
        status, head, _ = await request(port, paths[route])
        total, failures = server_timing(head)
        out.append([started, time.monotonic(), route, status, failures, total])


async def _load(port: int, start: float, until: float) -> list[list[Any]]:
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    out: list[list[Any]] = []
    await asyncio.gather(*(_connection(port, i, until, out) for i in range(CONNECTIONS)))
    return out


def load_main(port: int, start: float, until: float) -> None:
    """The load generator's process: one JSON line of [start, end, route, status, ...]."""
    sys.stdout.write(json.dumps(asyncio.run(_load(port, start, until))) + "\n")


# -- the black hole -------------------------------------------------------------------


class RedisProxy:
    """A TCP proxy in front of a Redis that forwards, or black-holes it.

    Black-holed, it reads from no socket and connects nothing upstream:
    clients' commands wait unanswered in the kernel's buffers, as across a
    network partition, and new connections are accepted and held. When the
    fault ends every socket is read again and the held connections are
    connected upstream (a client that gave up has closed its end by then).
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.listener.setblocking(False)
        self.port = int(self.listener.getsockname()[1])
        self.peers: dict[socket.socket, socket.socket] = {}
        self.held: list[socket.socket] = []
        self.blackholed = False
        self._wanted = False
        self._stop = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def blackhole(self, on: bool) -> None:
        """Start (``True``) or end the fault; takes effect within 10 ms."""
        self._wanted = on

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._wanted != self.blackholed:
                self._switch()
            for key, _ in self._selector.select(timeout=0.01):
                if key.fileobj is self.listener:
                    self._accept()
                else:
                    self._pump(key.fileobj)  # type: ignore[arg-type]

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        client.setblocking(True)
        if self.blackholed:
            self.held.append(client)
        else:
            self._connect(client)

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=1.0)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        self.peers[client], self.peers[upstream] = upstream, client
        for sock in (client, upstream):
            self._selector.register(sock, selectors.EVENT_READ)

    def _pump(self, sock: socket.socket) -> None:
        peer = self.peers.get(sock)
        if peer is None:
            return
        try:
            data = sock.recv(65536)
            if data:
                peer.sendall(data)
                return
        except OSError:
            pass
        for end in (sock, peer):
            self.peers.pop(end, None)
            self._selector.unregister(end)
            end.close()

    def _switch(self) -> None:
        self.blackholed = self._wanted
        for sock in self.peers:
            if self.blackholed:
                self._selector.unregister(sock)
            else:
                self._selector.register(sock, selectors.EVENT_READ)
        if not self.blackholed:
            held, self.held = self.held, []
            for client in held:
                self._connect(client)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for sock in [*self.peers, *self.held, self.listener]:
            sock.close()
        self._selector.close()


# -- the run --------------------------------------------------------------------------


def write_title(python: str, env: dict[str, str], title: str) -> dict[str, Any]:
    """Change the newest article's title in a process of its own; when its save() returned."""
    out = manage(python, env, "shell", "-c", WRITE_CODE.format(title=title))
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WROTE ")), None)
    if line is None:
        return {"title": title, "error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return {"title": title, "returned": float(line.split()[1])}


def probe(port: int, path: str) -> dict[str, Any]:
    """``PROBE_REQUESTS`` requests from a new client (its own rate-limit bucket)."""
    headers = {PROBE_HEADER: uuid.uuid4().hex}

    async def go() -> list[int]:
        return [(await request(port, path, headers))[0] for _ in range(PROBE_REQUESTS)]

    started = time.monotonic()
    statuses = asyncio.run(go())
    return {"statuses": statuses, "seconds": round(time.monotonic() - started, 2)}


def sample_list(port: int, until: float, titles: list[str]) -> list[dict[str, Any]]:
    """``/articles/`` every ``SAMPLE_EVERY_S`` until ``until``: which written titles it showed."""

    async def go() -> list[dict[str, Any]]:
        samples = []
        while time.monotonic() < until:
            started = time.monotonic()
            status, _, body = await request(port, "/articles/")
            shown = [i for i, title in enumerate(titles) if title.encode() in body]
            samples.append({"started": started, "status": status, "shown": shown})
            await asyncio.sleep(max(0.0, started + SAMPLE_EVERY_S - time.monotonic()))
        return samples

    return asyncio.run(go())


class Timeline:
    """Calls at fixed times from the load's start, each in a thread, results kept by name."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.results: dict[str, Any] = {}
        self.threads: list[threading.Thread] = []

    def at(self, offset: float, name: str, call: Callable[[], Any]) -> None:
        def run() -> None:
            time.sleep(max(0.0, self.start + offset - time.monotonic()))
            try:
                self.results[name] = call()
            except Exception as exc:  # reported, never fatal to the run
                self.results[name] = {"error": f"{type(exc).__name__}: {exc}"}

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def sleep_until(self, offset: float) -> None:
        time.sleep(max(0.0, self.start + offset - time.monotonic()))

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=120)


def cpu_snapshot(postmaster: int) -> tuple[float, float, float]:
    """(wall clock, the machine's busy CPU seconds, this run's: us, our children, PostgreSQL)."""
    return time.monotonic(), machine_busy(), tree_cpu([os.getpid(), postmaster])


def others_cores(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    wall = b[0] - a[0]
    return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / wall) if wall > 0 else 0.0


def lock_session(pg: PrivatePostgres) -> Any:
    """A PostgreSQL session for the lock, opened before the fault begins."""
    import psycopg

    return psycopg.connect(host="127.0.0.1", port=pg.port, user=pg.user, dbname=DATABASE)


@contextmanager
def fault(name: str, redis: PrivateRedis, proxy: RedisProxy | None, session: Any) -> Iterator[None]:
    """The fault, from entering the block to leaving it."""
    if name == "redis-stop":
        redis.stop()
        try:
            yield
        finally:
            redis.start()  # the same port; empty
    elif name == "redis-blackhole":
        assert proxy is not None
        proxy.blackhole(True)
        try:
            yield
        finally:
            proxy.blackhole(False)
    else:
        # Queries of the table already running finish first; later ones queue behind.
        session.execute(f"LOCK TABLE {LOCKED_TABLE} IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            session.rollback()


def run_fault(
    name: str,
    python: str,
    base: dict[str, str],
    redis: PrivateRedis,
    pg: PrivatePostgres,
    tmp: Path,
) -> dict[str, Any]:
    postmaster = int((pg.dir / "data" / "postmaster.pid").read_text().split()[0])
    titles = [f"Fault check {name} during", f"Fault check {name} after"]
    redis_fault = name.startswith("redis")
    clock = time.time() - time.monotonic()  # from the log's clock to the load's
    proxy = RedisProxy(redis.port) if name == "redis-blackhole" else None
    env = {**base, "REDIS_URL": proxy.url if proxy else redis.url}
    server = Server("perfkit", python, env, tmp / f"{name}.log")
    session = loader = None
    try:
        session = lock_session(pg) if name == "pg-lock" else None
        server.start()
        port = server.port
        for path in ROUTES.values():  # fill the caches before the clock starts
            asyncio.run(request(port, path))
        fault_at = WARMUP_S + BEFORE_S
        end_at = fault_at + FAULT_S
        load_end = end_at + AFTER_S
        start = time.monotonic() + 1.5  # the load generator's start-up
        loader = subprocess.Popen(
            [sys.executable, __file__, "--load", str(port), repr(start), repr(start + load_end)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        timeline = Timeline(start)
        for phase, offset in (
            ("before", WARMUP_S + 1),
            ("during", fault_at + PROBE_DURING_S),
            ("after", end_at + PROBE_AFTER_S),
        ):
            for policy, path in (("open", PROBE_OPEN_PATH), ("closed", PROBE_CLOSED_PATH)):
                timeline.at(offset, f"probe {phase} {policy}", partial(probe, port, path))
        first_write = fault_at + WRITE_DURING_S if redis_fault else end_at + WRITE_AFTER_S
        if redis_fault:
            timeline.at(first_write, "write during", lambda: write_title(python, env, titles[0]))
        timeline.at(
            end_at + WRITE_AFTER_S, "write after", lambda: write_title(python, env, titles[1])
        )
        timeline.at(first_write, "samples", lambda: sample_list(port, start + load_end, titles))
        timeline.sleep_until(WARMUP_S)
        cpu = [cpu_snapshot(postmaster)]
        timeline.sleep_until(fault_at)
        cpu.append(cpu_snapshot(postmaster))
        started = time.monotonic()
        with fault(name, redis, proxy, session):
            began = time.monotonic()
            cpu.append(cpu_snapshot(postmaster))
            timeline.sleep_until(end_at)
        ended = time.monotonic()
        cpu.append(cpu_snapshot(postmaster))
        timeline.sleep_until(load_end)
        cpu.append(cpu_snapshot(postmaster))
        out, err = loader.communicate(timeout=REQUEST_TIMEOUT_S + 30)
        timeline.join()
    finally:
        if loader is not None and loader.poll() is None:
            loader.kill()
        server.stop()
        if proxy is not None:
            proxy.close()
        if session is not None:
            session.close()
    if loader.returncode != 0 or not out.strip():
        return {"error": f"load generator failed: {(err.strip().splitlines() or ['?'])[-1]}"}
    records = json.loads(out.strip().splitlines()[-1])
    # Phases from the moments the fault really began and ended (a restart takes time).
    bounds = {
        "before": (start + WARMUP_S, started),
        "during": (began, ended),
        "after": (ended, start + load_end),
    }
    results: dict[str, Any] = {
        "label": FAULTS[name],
        "redis": "through the proxy" if proxy else "direct",
        "seconds": {p: round(b - a, 2) for p, (a, b) in bounds.items()},
        "phases": {p: stats(records, a, b) for p, (a, b) in bounds.items()},
        "routes": {
            p: {r: stats(records, a, b, route=i) for i, r in enumerate(ROUTES)}
            for p, (a, b) in bounds.items()
        },
        "timeline": [
            {"t": round(t - began, 1), **stats(records, t, t + TIMELINE_SLICE_S)}
            for t in _steps(began - 2 * TIMELINE_SLICE_S, start + load_end, TIMELINE_SLICE_S)
        ],
        "probes": {
            phase: {
                policy: timeline.results.get(f"probe {phase} {policy}")
                for policy in ("open", "closed")
            }
            for phase in ("before", "during", "after")
        },
        # The log's "during" starts with the fault's first step (stopping Redis takes a moment).
        "log": scan_log(server.log, {**bounds, "during": (started, ended)}, clock, started),
        # Cores that processes other than this run's used, per phase.
        "others_cores": {
            phase: others_cores(cpu[i], cpu[j])
            for phase, i, j in (("before", 0, 1), ("during", 2, 3), ("after", 3, 4))
        },
    }
    results["recovery_s"] = recovery(records, results["phases"]["before"]["p50_ms"], ended,
                                     start + load_end)  # fmt: skip
    writes = [timeline.results.get(k) for k in ("write during", "write after")]
    results["stale"] = stale_reads(writes, timeline.results.get("samples"))
    return results


def _steps(first: float, last: float, step: float) -> Iterator[float]:
    t = first
    while t + step <= last + 1e-9:
        yield t
        t += step


def _percentile(values: list[float], q: float) -> float | None:
    """Nearest rank: the smallest value with at least ``q`` of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def stats(records: list[list[Any]], a: float, b: float, route: int | None = None) -> dict[str, Any]:
    """The requests that started in [a, b): rate, latency, statuses, Redis failures."""
    rows = [r for r in records if a <= r[0] < b and (route is None or r[2] == route)]
    latency = [(r[1] - r[0]) * 1000 for r in rows]
    server = [r[5] for r in rows if r[5] is not None]
    return {
        "requests": len(rows),
        "rps": len(rows) / (b - a) if b > a else 0.0,
        "p50_ms": _percentile(latency, 0.5),
        "p99_ms": _percentile(latency, 0.99),
        "max_ms": max(latency, default=None),
        "server_p50_ms": _percentile(server, 0.5),
        "ok": sum(200 <= r[3] < 300 for r in rows),
        "4xx": sum(400 <= r[3] < 500 for r in rows),
        "5xx": sum(r[3] >= 500 for r in rows),
        "failed": sum(r[3] == 0 for r in rows),
        "without_redis": sum(r[4] > 0 for r in rows),
    }


def recovery(
    records: list[list[Any]], baseline: float | None, ended: float, last: float
) -> float | None:
    """Seconds from the fault's end to the end of the first slice back near the baseline."""
    if baseline is None:
        return None
    for t in _steps(ended, last, SLICE_S):
        s = stats(records, t, t + SLICE_S)
        if s["p50_ms"] is not None and s["p50_ms"] <= RECOVERY_FACTOR * baseline and not s["5xx"]:
            return round(t + SLICE_S - ended, 1)
    return None


def stale_reads(writes: list[Any], samples: Any) -> dict[str, Any]:
    """Reads that started after a write had returned and did not show it (or a later one)."""
    errors = [w["error"] for w in writes if isinstance(w, dict) and "error" in w]
    if isinstance(samples, dict) or samples is None:
        errors.append(samples.get("error", "no samples") if samples else "no samples")
        samples = []
    done = [(i, w["returned"]) for i, w in enumerate(writes) if w and "returned" in w]
    checked = stale = 0
    for sample in samples:
        if sample["status"] != 200:
            continue
        due = [i for i, returned in done if returned < sample["started"]]
        if not due:
            continue
        checked += 1
        if not any(i >= max(due) for i in sample["shown"]):
            stale += 1
    return {"writes": sum(1 for w in writes if w), "checked": checked, "stale": stale,
            "errors": errors}  # fmt: skip


_LOG_LINE = re.compile(r"^(\d{9,}\.\d+) (\S+) (\w+) (.*)$")
_FAILED_CALL = "perfkit: Redis call failed: "


def scan_log(
    log: Path, bounds: dict[str, tuple[float, float]], clock: float, started: float
) -> dict[str, Any]:
    """What gunicorn's log says: timeouts, restarts, tracebacks, Redis failures, the breaker.

    Lines from ``bench/faults_settings.py``'s logging carry ``time.time()``;
    subtracting ``clock`` turns it into the monotonic clock of ``bounds``.
    The breaker's openings are timed from ``started`` (the fault's first
    step: stopping Redis takes a moment), its closings from the fault's end.
    """
    text = log.read_text(errors="replace") if log.exists() else ""
    failed: dict[str, dict[str, int]] = {phase: {} for phase in bounds}
    opened: list[float] = []
    closed: list[float] = []
    tracebacks: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("Traceback"):
            tracebacks.append([line])
            continue
        if tracebacks and len(tracebacks[-1]) < 200 and tracebacks[-1][-1][:1] in (" ", "T"):
            tracebacks[-1].append(line)  # frames are indented; the exception line is not
            continue
        match = _LOG_LINE.match(line)
        if match is None:
            continue
        at, message = float(match.group(1)) - clock, match.group(4)
        if message.startswith(_FAILED_CALL):
            # "network:TimeoutError" (a redis-py repr) or "TimeoutError('...')"
            error = message[len(_FAILED_CALL) :].split("(", 1)[0].rsplit(":", 1)[-1]
            phase = next((p for p, (a, b) in bounds.items() if a <= at < b), None)
            if phase is not None:
                failed[phase][error] = failed[phase].get(error, 0) + 1
        elif "skipping Redis for" in message:
            opened.append(round(at - started, 2))
        elif "circuit breaker closed" in message:
            closed.append(round(at - bounds["during"][1], 2))
    exceptions = [tb[-1] for tb in tracebacks]
    return {
        "worker_timeouts": text.count("WORKER TIMEOUT"),
        "workers_booted": text.count("Booting worker"),
        "tracebacks": len(tracebacks),
        "redis_errors": sum("redis" in e.lower() for e in exceptions),
        "exceptions": sorted(set(exceptions))[:5],
        "failed_calls": failed,
        # Seconds from the fault's start (opened) and from its end (closed).
        "breaker_opened": opened,
        "breaker_closed": closed,
    }


def run() -> dict[str, Any]:
    chosen = [f for f in os.environ.get("BENCH_FAULTS", ",".join(FAULTS)).split(",") if f]
    unknown = [f for f in chosen if f not in FAULTS]
    if unknown:
        return {"error": f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(FAULTS)}"}
    python = venvs.python_for(venv_name("perfkit"), requirements("perfkit"))
    results: dict[str, Any] = {
        "workers": WORKERS,
        "connections": CONNECTIONS,
        "routes": ROUTES,
        "seconds": {"warmup": WARMUP_S, "before": BEFORE_S, "fault": FAULT_S, "after": AFTER_S},
        "versions": versions(python),
        "loadavg": [os.getloadavg()[0]],
        "faults": {},
    }
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = time.monotonic()
    pg, redis = PrivatePostgres(), PrivateRedis()
    tmp = Path(tempfile.mkdtemp(prefix="perfkit-bench-faults-"))
    try:
        pg.start()
        redis.start()
        base = site_env(SETTINGS, pg, DATABASE, redis.url)
        try:
            site.prepare(base)
        except RuntimeError as exc:
            return {**results, "error": str(exc)}
        for name in chosen:
            print(f"bench: fault {name} under load ...", file=sys.stderr, flush=True)
            try:
                results["faults"][name] = run_fault(name, python, base, redis, pg, tmp)
            except Exception as exc:  # one fault's failure is reported, the others still run
                results["faults"][name] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        redis.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    results["loadavg"].append(os.getloadavg()[0])
    results["wall_s"] = round(time.monotonic() - began, 1)
    return results


# -- the tables -----------------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f} ms" if value >= 100 else f"{value:.1f} ms"


def _statuses(probe: Any) -> str:
    if probe is None or "error" in probe:
        return "not run" if probe is None else f"error: {probe['error']}"
    counts: dict[int, int] = {}
    for code in probe["statuses"]:
        counts[code] = counts.get(code, 0) + 1
    return " + ".join(f"{n}×{code or 'no answer'}" for code, n in sorted(counts.items()))


def table(results: dict[str, Any]) -> str:
    if "error" in results and not results.get("faults"):
        return f"Not run: {results['error']}."
    s = results["seconds"]
    lines = [
        f"### Each phase: gunicorn, {results['workers']} sync workers, {results['connections']} "
        "connections",
        "",
        f"Before: {s['before']:.0f} s; fault: {s['fault']:.0f} s; after: {s['after']:.0f} s. "
        "Latency of the requests that started in the phase; 5xx and no answer are the load's.",
        "",
        "| fault | phase | req/s | p50 | p99 | slowest | server p50 | 5xx | no answer "
        "| without Redis | other work |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    faults = results.get("faults", {})
    for name, f in faults.items():
        if "error" in f:
            lines.append(f"| {FAULTS[name]} | did not run: {f['error']} | | | | | | | | | |")
            continue
        for phase, p in f["phases"].items():
            label = f"{f['label']} (Redis {f['redis']})" if phase == "before" else ""
            lines.append(
                f"| {label} | {phase} ({f['seconds'][phase]:.0f} s) | {p['rps']:,.0f} "
                f"| {_ms(p['p50_ms'])} | {_ms(p['p99_ms'])} | {_ms(p['max_ms'])} "
                f"| {_ms(p['server_p50_ms'])} | {p['5xx']} | {p['failed']} "
                f"| {_share(p['without_redis'], p['requests'])} "
                f"| {f['others_cores'][phase]:.2f} cores |"
            )
    lines += [
        "",
        "### Each fault: errors, recovery, stale reads, rate limits",
        "",
        f"Rate limits: {PROBE_REQUESTS} requests from a new client to a rule of "
        f"{PROBE_LIMIT} a minute, before, during and after the fault.",
        "",
        "| fault | 5xx during and after | of them perfkit's | gunicorn log "
        "| perfkit's Redis calls that failed: before / during / after | circuit breaker "
        '| recovered after | stale reads | `fail="open"` limit: before / during / after '
        '| `fail="closed"` limit: before / during / after |',
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in faults.values():
        if "error" in f:
            continue
        log, stale, probes = f["log"], f["stale"], f["probes"]
        errors = sum(f["phases"][p]["5xx"] for p in ("during", "after"))
        log_cell = (
            f"{log['worker_timeouts']} worker timeouts, {log['tracebacks']} tracebacks, "
            f"{log['workers_booted'] - results['workers']} restarts"
        )
        failed = " / ".join(
            ", ".join(f"{n} {error}" for error, n in sorted(calls.items())) or "0"
            for calls in log["failed_calls"].values()
        )
        rec = f["recovery_s"]
        stale_cell = f"{stale['stale']} of {stale['checked']}" + (
            f" ({'; '.join(stale['errors'])})" if stale["errors"] else ""
        )
        cells = {
            policy: " / ".join(_statuses(probes[phase][policy]) for phase in probes)
            for policy in ("open", "closed")
        }
        lines.append(
            f"| {f['label']} | {errors} | {log['redis_errors']} | {log_cell} | {failed} "
            f"| {_breaker(log)} | {'not within the run' if rec is None else f'{rec:.0f} s'} "
            f"| {stale_cell} | {cells['open']} | {cells['closed']} |"
        )
    lines += ["", *_timeline(faults), *_notes(results)]
    return "\n".join(lines)


def _breaker(log: dict[str, Any]) -> str:
    opened, closed = log["breaker_opened"], log["breaker_closed"]
    if not opened and not closed:
        return "stayed closed"
    text = []
    if opened:
        text.append(f"opened {len(opened)}×, {_span(opened)} into the fault")
    if closed:
        text.append(f"closed {len(closed)}×, {_span(closed)} after it")
    return "; ".join(text)


def _span(seconds: list[float]) -> str:
    low, high = f"{min(seconds):.1f}", f"{max(seconds):.1f}"
    return f"{low} s" if low == high else f"{low}–{high} s"


def _share(part: int, whole: int) -> str:
    return f"{part:,} ({100 * part / whole:.0f}%)" if whole else "0"


def _timeline(faults: dict[str, Any]) -> list[str]:
    ran = {name: f for name, f in faults.items() if "error" not in f}
    if not ran:
        return []
    lines = [
        f"### Timeline: p50 / p99 latency (requests per {TIMELINE_SLICE_S:.0f} s slice)",
        "",
        f"Seconds from the fault's start; it ends at {FAULT_S:.0f}.",
        "",
        "| t | " + " | ".join(f["label"] for f in ran.values()) + " |",
        "|---|" + "---|" * len(ran),
    ]
    rows = max(len(f["timeline"]) for f in ran.values())
    for i in range(rows):
        slices = [f["timeline"][i] if i < len(f["timeline"]) else None for f in ran.values()]
        t = next(s["t"] for s in slices if s is not None)
        cells = [
            "" if s is None
            else f"{_ms(s['p50_ms'])} / {_ms(s['p99_ms'])} ({s['requests']})"
            + (f", {s['5xx']} 5xx" if s["5xx"] else "")
            + (f", {s['failed']} no answer" if s["failed"] else "")
            for s in slices
        ]  # fmt: skip
        lines.append(f"| {t:+.0f} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _notes(results: dict[str, Any]) -> list[str]:
    notes = []
    load = results.get("loadavg", [])
    if load:
        notes.append(
            f"- Load average of the machine ({os.cpu_count()} cores): "
            + " at the start, ".join(f"{x:.1f}" for x in load)
            + " at the end; the site, PostgreSQL, Redis and the load generator share it."
        )
    for f in results.get("faults", {}).values():
        if "error" in f:
            continue
        during = f["routes"]["during"]
        limited = [r for r in ("JSON API", "search") if during[r]["requests"]]
        ok = ", ".join(f"{r} {_share(during[r]['ok'], during[r]['requests'])} 2xx" for r in limited)
        notes.append(f"- {f['label']}: during the fault the demo's limited routes answered {ok}.")
        waited = [
            f"{phase} {policy} {probe['seconds']:.1f} s"
            for phase, policies in f["probes"].items()
            for policy, probe in policies.items()
            if probe and probe.get("seconds", 0) > PROBE_SLOW_S
        ]
        if waited:
            notes.append(
                f"- {f['label']}: rate-limit probes that took over {PROBE_SLOW_S:.0f} s "
                f"(their requests waited for a free worker): {', '.join(waited)}."
            )
        for exc in f["log"]["exceptions"]:
            notes.append(f"- {f['label']}: in gunicorn's log: `{exc[:160]}`")
    if "wall_s" in results:
        notes.append(f"- The whole script took {results['wall_s']:.0f} s.")
    return ["Notes:", "", *notes, ""] if notes else []


if __name__ == "__main__":
    if sys.argv[1:2] == ["--load"]:
        load_main(int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
    else:
        report(run, table)
