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
* ``<server>:<minute>:ratelimit``: per rate-limit group, ``group|checked``
  and ``group|limited`` (same expiry).
* ``<server>:inflight``: a gauge, ``route`` to the requests in flight at the
  process's last flush (rewritten at each flush; it expires with the server).

Memory: per server and minute at most ``MAX_ROUTES`` routes × 17 fields
(further routes count as ``(other)``), and as many rate-limit groups × 2;
with 10 servers, 60 minutes and 50 active routes, about 510,000 small hash
fields at most, typically far fewer (a field exists only for a route that
was requested in that minute). In each process: one minute's counts between
two flushes, and one integer per route in flight.

Percentiles come from the histogram: the upper edge of the bucket where the
count crosses the percentile, so they are exact to a bucket (5 ms up to
10 ms, 25 ms up to 50 ms, ...), which is what an on-call engineer reads.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any

from django_perfkit.conf import get_settings
from django_perfkit.record import RequestRecord
from django_perfkit.redis import get_gateway

__all__ = [
    "BUCKETS_MS",
    "Recorder",
    "enter_route",
    "fleet_snapshot",
    "leave_route",
    "live_servers",
    "recorder",
    "report_fleet",
]

#: Upper edges of the latency buckets, in milliseconds (the last is open).
BUCKETS_MS: tuple[float, ...] = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
_FIELDS = ("n", "err", "q", "rl", "ms") + tuple(f"b{i}" for i in range(len(BUCKETS_MS) + 1))
OTHER_ROUTE = "(other)"
UNRESOLVED_ROUTE = "(unresolved)"


def route_key(route: str | None) -> str:
    """A route as the stats name it: the URL pattern; ``/`` for the root
    pattern (``""``), ``(unresolved)`` for a request that matched none."""
    if route is None:
        return UNRESOLVED_ROUTE
    return route or "/"


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
        #: (minute, rate-limit group) -> [checked, limited].
        self._groups: dict[tuple[int, str], list[int]] = {}
        #: route -> requests in flight now (a gauge, not reset by a flush).
        self._inflight: dict[str, int] = {}
        self._thread: threading.Thread | None = None
        self._started = time.time()

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:  # a forked worker: its own counts and thread
            self.__init__(background=self.background)  # type: ignore[misc]

    def enter(self, route: str) -> None:
        """A request for ``route`` started its view (the middleware calls this)."""
        self._check_fork()
        with self._lock:
            self._inflight[route] = self._inflight.get(route, 0) + 1

    def leave(self, route: str) -> None:
        """That request finished, whatever its outcome."""
        with self._lock:
            left = self._inflight.get(route, 0) - 1
            if left > 0:
                self._inflight[route] = left
            else:
                self._inflight.pop(route, None)

    def add(self, record: RequestRecord) -> None:
        """Count one finished request (the reporter calls this)."""
        self._check_fork()
        minute = int(record.started_at // 60)
        route = route_key(record.route)
        ms = record.duration * 1000
        bucket = bisect.bisect_left(BUCKETS_MS, ms)
        limited = False
        with self._lock:
            for decision in record.ratelimits:
                group = self._groups.get((minute, decision.group))
                if group is None:
                    group = self._groups[(minute, decision.group)] = [0, 0]
                group[0] += 1
                group[1] += decision.limited
                limited = limited or decision.limited
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
            groups, self._groups = self._groups, {}
            self._routes = {}
            inflight = dict(self._inflight)
        gateway = get_gateway()
        if not gateway.configured:
            return False
        conf = get_settings().fleet
        server = _server_id()
        ttl = conf.window_minutes * 60 + 120
        servers_key = gateway.key("fleet", "stats", "servers")
        inflight_key = gateway.key("fleet", "stats", server, "inflight")
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
            pipe.delete(inflight_key)
            if inflight:
                pipe.hset(inflight_key, mapping=inflight)
                pipe.expire(inflight_key, math.ceil(_alive_for(conf.flush_interval)))
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
            touched: set[str] = set()
            for (minute, group), (checked, limited) in groups.items():
                key = gateway.key("fleet", "stats", server, minute, "ratelimit")
                pipe.hincrby(key, f"{group}|checked", checked)
                if limited:
                    pipe.hincrby(key, f"{group}|limited", limited)
                touched.add(key)
            for key in touched:
                pipe.expire(key, ttl)
            pipe.execute()
            return True

        return bool(gateway.run(send, False))


def _alive_for(flush_interval: float) -> float:
    """Seconds without a flush after which a server counts as gone."""
    return max(10.0, 3 * flush_interval)


def _version() -> str:
    import django_perfkit

    return django_perfkit.__version__


#: The process's recorder (the reporter's).
recorder = Recorder()


def enter_route(record: RequestRecord, request: Any) -> None:
    """Count ``request`` as in flight on its route (the middleware, before the view)."""
    match = getattr(request, "resolver_match", None)
    if match is None or "perfkit" in match.app_names:  # not the panel's own requests
        return
    if record.inflight_route is None:
        record.inflight_route = route = route_key(match.route)
        recorder.enter(route)


def leave_route(record: RequestRecord) -> None:
    """No longer in flight (the reporter, or the middleware when the view raised)."""
    route, record.inflight_route = record.inflight_route, None
    if route is not None:
        recorder.leave(route)


def report_fleet(record: RequestRecord, request: Any, response: Any) -> None:
    """The reporter: count the request for the fleet stats (not the panel's own)."""
    leave_route(record)
    if get_settings().fleet.enabled and not getattr(request, "_perfkit_panel", False):
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
    alive_for = _alive_for(conf.flush_interval)
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
            found[_text(server)] = info
        elif age > conf.window_minutes * 60:
            stale.append(server)
    if stale:
        gateway.run(lambda client: client.hdel(key, *stale), 0)
    return found


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def fleet_snapshot(
    minutes: int = 5, server: str | None = None, now: float | None = None
) -> dict[str, Any]:
    """Every live server's counts over the last ``minutes``, added up per route.

    ``{"servers": {id: {..., "inflight", "requests"}}, "minutes": n,
    "routes": [{"route", "requests", "rps", "errors", "inflight", "p50_ms",
    "p95_ms", "p99_ms", "mean_ms", "mean_queries", "ratelimited", "servers",
    "series"}, ...] (busiest first), "ratelimits": [{"group", "checked",
    "limited", "series"}, ...], "totals": {... all routes}, "error_series": [...]}``.
    A ``series`` counts requests (blocked requests, 5xx) per minute, oldest first.
    """
    now = time.time() if now is None else now
    servers = live_servers(now)
    if server is not None:
        servers = {sid: info for sid, info in servers.items() if sid == server}
    gateway = get_gateway()
    current = int(now // 60)
    window = list(range(current - minutes + 1, current + 1))
    reads: list[tuple[str, str, int, str]] = []  # (kind, server, minute index, key)
    for sid in servers:
        reads.append(("inflight", sid, -1, gateway.key("fleet", "stats", sid, "inflight")))
        for index, minute in enumerate(window):
            reads.append(("routes", sid, index, gateway.key("fleet", "stats", sid, minute)))
            reads.append(
                ("groups", sid, index, gateway.key("fleet", "stats", sid, minute, "ratelimit"))
            )

    results = _read_hashes([key for *_, key in reads])
    totals: dict[str, dict[str, float]] = {}
    series: dict[str, list[int]] = {}
    route_servers: dict[str, set[str]] = {}
    inflight: dict[str, int] = {}
    groups: dict[str, list[int]] = {}
    group_series: dict[str, list[int]] = {}
    error_series = [0] * minutes
    per_server: dict[str, dict[str, int]] = {sid: {"requests": 0, "inflight": 0} for sid in servers}
    for (kind, sid, index, _), fields in zip(reads, results, strict=False):
        for raw_field, raw_value in fields.items():
            field = _text(raw_field)
            if kind == "inflight":
                count = int(raw_value)
                inflight[field] = inflight.get(field, 0) + count
                per_server[sid]["inflight"] += count
                route_servers.setdefault(field, set()).add(sid)
                continue
            name, _, what = field.rpartition("|")
            if kind == "groups":
                row_g = groups.setdefault(name, [0, 0])
                row_g[0 if what == "checked" else 1] += int(raw_value)
                if what == "limited":
                    group_series.setdefault(name, [0] * minutes)[index] += int(raw_value)
                continue
            row = totals.setdefault(name, dict.fromkeys(_FIELDS, 0.0))
            row[what] = row.get(what, 0.0) + float(raw_value)
            route_servers.setdefault(name, set()).add(sid)
            if what == "n":
                series.setdefault(name, [0] * minutes)[index] += int(raw_value)
                per_server[sid]["requests"] += int(raw_value)
            elif what == "err":
                error_series[index] += int(raw_value)
    for route in inflight:
        totals.setdefault(route, dict.fromkeys(_FIELDS, 0.0))
    rows = [
        _row(
            route,
            row,
            minutes,
            route_servers.get(route, ()),
            inflight.get(route, 0),
            series.get(route, [0] * minutes),
        )
        for route, row in totals.items()
    ]
    rows.sort(key=lambda r: (-r["requests"], r["route"]))
    everything = dict.fromkeys(_FIELDS, 0.0)
    for row in totals.values():
        for name in _FIELDS:
            everything[name] += row[name]
    all_series = [sum(values[i] for values in series.values()) for i in range(minutes)]
    summary = _row("(all)", everything, minutes, servers, sum(inflight.values()), all_series)
    ratelimits: list[dict[str, Any]] = [
        {
            "group": group,
            "checked": checked,
            "limited": limited,
            "series": group_series.get(group, [0] * minutes),
        }
        for group, (checked, limited) in groups.items()
    ]
    ratelimits.sort(key=lambda g: (-int(g["limited"]), -int(g["checked"]), str(g["group"])))
    for sid, info in servers.items():
        info.update(per_server[sid])
    return {
        "servers": servers,
        "minutes": minutes,
        "routes": rows,
        "ratelimits": ratelimits,
        "totals": summary,
        "error_series": error_series,
    }


#: Hashes read per round trip. Redis runs a client's pipelined commands one
#: after the other without serving anyone else: a window of a large fleet
#: (servers x minutes hashes of up to MAX_ROUTES x 17 fields) read in one
#: pipeline would hold up every rate-limit check and cache hit meanwhile.
READ_CHUNK = 8


def _read_hashes(keys: list[str]) -> list[dict[Any, Any]]:
    """``HGETALL`` of each key, a few per round trip; ``{}`` for any Redis did not answer."""
    gateway = get_gateway()
    results: list[dict[Any, Any]] = []
    for start in range(0, len(keys), READ_CHUNK):
        chunk = keys[start : start + READ_CHUNK]

        def read(client: Any, chunk: list[str] = chunk) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for key in chunk:
                pipe.hgetall(key)
            return list(pipe.execute())

        got: list[Any] | None = gateway.run(read, None)
        results.extend(got if got is not None else [{}] * len(chunk))
    return results


def _row(
    route: str,
    row: dict[str, float],
    minutes: int,
    servers: Iterable[str],
    inflight: int,
    series: list[int],
) -> dict[str, Any]:
    total = int(row["n"])
    histogram = [int(row[f"b{i}"]) for i in range(len(BUCKETS_MS) + 1)]
    return {
        "route": route,
        "requests": total,
        "rps": round(total / (minutes * 60), 3),
        "errors": int(row["err"]),
        "inflight": inflight,
        "p50_ms": _percentile(histogram, total, 0.50),
        "p95_ms": _percentile(histogram, total, 0.95),
        "p99_ms": _percentile(histogram, total, 0.99),
        "mean_ms": round(row["ms"] / total, 3) if total else None,
        "mean_queries": round(row["q"] / total, 2) if total else None,
        "ratelimited": int(row["rl"]),
        "servers": sorted(servers),
        "series": series,
    }
