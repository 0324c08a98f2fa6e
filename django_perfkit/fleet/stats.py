"""Per-route request counts, latency histograms and query means, across the fleet.

In Redis (all under one hash tag, ``{fleet:stats}``):

* ``servers``: a hash of server id (``host:pid``) to a JSON line (host, pid,
  perfkit version, start time, last flush). A process that stops flushing
  for ``3 × FLUSH_INTERVAL`` (at least 10 s) is dead and not shown; its entry
  is removed once older than the window. A new app server appears at its
  first flush, with no configuration.
* ``<server>:<minute>``: a hash per server and minute, ``route|field`` to a
  count, for fields ``n`` (requests), ``err`` (5xx), ``q`` (queries),
  ``rl`` (rate-limited), ``ms`` (total milliseconds) and ``b0`` ... ``b11``
  (the latency histogram, :data:`BUCKETS_MS`). It expires after
  ``WINDOW_MINUTES``.

Memory: per server and minute at most ``MAX_ROUTES`` routes × 17 fields
(further routes count as ``(other)``); with 10 servers, 60 minutes and 50
active routes, about 510,000 small hash fields at most, typically far fewer
(a field exists only for a route that was requested in that minute).

Percentiles come from the histogram: the upper edge of the bucket where the
count crosses the percentile, so they are exact to a bucket (5 ms up to
10 ms, 25 ms up to 50 ms, ...), which is what an on-call engineer reads.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any

from django_perfkit.conf import get_settings
from django_perfkit.record import RequestRecord
from django_perfkit.redis import get_gateway

__all__ = ["BUCKETS_MS", "Recorder", "fleet_snapshot", "recorder", "report_fleet"]

#: Upper edges of the latency buckets, in milliseconds (the last is open).
BUCKETS_MS: tuple[float, ...] = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
_FIELDS = ("n", "err", "q", "rl", "ms") + tuple(f"b{i}" for i in range(len(BUCKETS_MS) + 1))
OTHER_ROUTE = "(other)"
UNRESOLVED_ROUTE = "(unresolved)"


def _server_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Recorder:
    """One process's counts, flushed to Redis by a daemon thread."""

    def __init__(self, *, background: bool = True) -> None:
        #: Flush from a daemon thread every FLUSH_INTERVAL (off: call flush() yourself).
        self.background = background
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._counts: dict[tuple[int, str], list[float]] = {}
        self._routes: dict[int, int] = {}
        self._thread: threading.Thread | None = None
        self._started = time.time()

    def add(self, record: RequestRecord) -> None:
        """Count one finished request (the reporter calls this)."""
        if os.getpid() != self._pid:  # a forked worker: its own counts and thread
            self.__init__(background=self.background)  # type: ignore[misc]
        minute = int(record.started_at // 60)
        route = record.route or UNRESOLVED_ROUTE
        ms = record.duration * 1000
        bucket = bisect.bisect_left(BUCKETS_MS, ms)
        limited = any(decision.limited for decision in record.ratelimits)
        with self._lock:
            row = self._counts.get((minute, route))
            if row is None:
                seen = self._routes.get(minute, 0)
                if seen >= get_settings().fleet.max_routes:
                    route = OTHER_ROUTE
                    row = self._counts.get((minute, route))
                if row is None:
                    row = self._counts[(minute, route)] = [0.0] * len(_FIELDS)
                    self._routes[minute] = seen + 1
            row[0] += 1
            row[1] += (record.status or 0) >= 500
            row[2] += record.db.count
            row[3] += limited
            row[4] += ms
            row[5 + bucket] += 1
        if self._thread is None and self.background:
            self._start_thread()

    def _start_thread(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            thread = threading.Thread(target=self._run, name="perfkit-fleet", daemon=True)
            self._thread = thread
        thread.start()

    def _run(self) -> None:
        while True:
            interval = 1.0
            with contextlib.suppress(Exception):  # the thread must not die: next flush
                interval = get_settings().fleet.flush_interval
            time.sleep(interval)
            with contextlib.suppress(Exception):
                self.flush()

    def flush(self) -> bool:
        """Send the counts so far to Redis in one pipeline. False if Redis did not take them
        (the counts are then dropped: stats are best effort, memory stays bounded)."""
        with self._lock:
            counts, self._counts = self._counts, {}
            self._routes = {}
        gateway = get_gateway()
        if not gateway.configured:
            return False
        conf = get_settings().fleet
        server = _server_id()
        ttl = conf.window_minutes * 60 + 120
        servers_key = gateway.key("fleet", "stats", "servers")
        info = json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "version": _version(),
                "started": round(self._started, 3),
                "seen": round(time.time(), 3),
            }
        )

        def send(client: Any) -> bool:
            pipe = client.pipeline(transaction=False)
            pipe.hset(servers_key, server, info)
            for (minute, route), row in counts.items():
                key = gateway.key("fleet", "stats", server, minute)
                for name, value in zip(_FIELDS, row, strict=True):
                    if not value:
                        continue
                    field = f"{route}|{name}"
                    if name == "ms":
                        pipe.hincrbyfloat(key, field, round(value, 3))
                    else:
                        pipe.hincrby(key, field, int(value))
                pipe.expire(key, ttl)
            pipe.execute()
            return True

        return bool(gateway.run(send, False))


def _version() -> str:
    import django_perfkit

    return django_perfkit.__version__


#: The process's recorder (the reporter's).
recorder = Recorder()


def report_fleet(record: RequestRecord, request: Any, response: Any) -> None:
    """The reporter: count the request for the fleet stats."""
    if get_settings().fleet.enabled:
        recorder.add(record)


def _percentile(histogram: list[int], total: int, fraction: float) -> float | None:
    if not total:
        return None
    wanted = fraction * total
    running = 0
    for index, count in enumerate(histogram):
        running += count
        if running >= wanted:
            return BUCKETS_MS[index] if index < len(BUCKETS_MS) else float("inf")
    return float("inf")


def live_servers(now: float | None = None) -> dict[str, dict[str, Any]]:
    """The servers that flushed recently: ``{server id: info}``."""
    gateway = get_gateway()
    conf = get_settings().fleet
    key = gateway.key("fleet", "stats", "servers")
    raw: dict[Any, Any] = gateway.run(lambda client: client.hgetall(key), {})
    now = time.time() if now is None else now
    alive_for = max(10.0, 3 * conf.flush_interval)
    found: dict[str, dict[str, Any]] = {}
    stale: list[Any] = []
    for server, text in raw.items():
        try:
            info = json.loads(text)
        except ValueError:
            stale.append(server)
            continue
        age = now - float(info.get("seen", 0))
        if age <= alive_for:
            found[server.decode() if isinstance(server, bytes) else str(server)] = info
        elif age > conf.window_minutes * 60:
            stale.append(server)
    if stale:
        gateway.run(lambda client: client.hdel(key, *stale), 0)
    return found


def fleet_snapshot(
    minutes: int = 5, server: str | None = None, now: float | None = None
) -> dict[str, Any]:
    """Every live server's counts over the last ``minutes``, added up per route.

    ``{"servers": {...}, "minutes": n, "routes": [{"route", "requests", "rps",
    "errors", "p50_ms", "p95_ms", "p99_ms", "mean_ms", "mean_queries",
    "ratelimited", "servers"}, ...]}``, busiest first.
    """
    now = time.time() if now is None else now
    servers = live_servers(now)
    if server is not None:
        servers = {sid: info for sid, info in servers.items() if sid == server}
    gateway = get_gateway()
    current = int(now // 60)
    window = range(current - minutes + 1, current + 1)
    keys = [
        (sid, gateway.key("fleet", "stats", sid, minute)) for sid in servers for minute in window
    ]

    def read(client: Any) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for _, key in keys:
            pipe.hgetall(key)
        return list(pipe.execute())

    results: list[Any] = gateway.run(read, []) if keys else []
    totals: dict[str, dict[str, float]] = {}
    route_servers: dict[str, set[str]] = {}
    for (sid, _), fields in zip(keys, results, strict=False):
        for raw_field, raw_value in fields.items():
            field = raw_field.decode() if isinstance(raw_field, bytes) else str(raw_field)
            route, _, name = field.rpartition("|")
            row = totals.setdefault(route, dict.fromkeys(_FIELDS, 0.0))
            row[name] = row.get(name, 0.0) + float(raw_value)
            route_servers.setdefault(route, set()).add(sid)
    rows = [_row(route, row, minutes, route_servers[route]) for route, row in totals.items()]
    rows.sort(key=lambda r: (-r["requests"], r["route"]))
    return {"servers": servers, "minutes": minutes, "routes": rows}


def _row(route: str, row: dict[str, float], minutes: int, servers: Iterable[str]) -> dict[str, Any]:
    total = int(row["n"])
    histogram = [int(row[f"b{i}"]) for i in range(len(BUCKETS_MS) + 1)]
    return {
        "route": route,
        "requests": total,
        "rps": round(total / (minutes * 60), 3),
        "errors": int(row["err"]),
        "p50_ms": _percentile(histogram, total, 0.50),
        "p95_ms": _percentile(histogram, total, 0.95),
        "p99_ms": _percentile(histogram, total, 0.99),
        "mean_ms": round(row["ms"] / total, 3) if total else None,
        "mean_queries": round(row["q"] / total, 2) if total else None,
        "ratelimited": int(row["rl"]),
        "servers": sorted(servers),
    }
