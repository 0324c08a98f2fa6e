"""What the query collector adds to each database query.

Modes, interleaved in every round so machine noise hits them alike:

* ``bare``: perfkit's execute wrapper removed from the connection (plain Django);
* ``idle``: wrapper installed, no request record open (code outside requests);
* ``collect``: inside a record, the default settings (call sites on);
* ``collect, no call sites``: inside a record, ``CAPTURE_CALL_SITES = False``;
* ``django debug cursor``: Django's own ``CaptureQueriesContext`` (what
  ``assertNumQueries`` and the debug toolbar build on), for reference.

Each round runs batches of 100 queries, one record per batch (a request with
100 queries), for two kinds of query: a raw ``cursor.execute("SELECT %s")``
(least work per query, so the difference is easiest to see) and an ORM
``User.objects.filter(pk=...).exists()`` (a realistic call stack for the
call-site walk). Reported: median µs per query over the rounds, and the
median of the per-round differences to ``bare``.

Two measurements:

1. **Around the collector** (the one the target is judged on). Two probe
   execute wrappers sit one on each side of the collector; per query, the
   outer span minus the inner span is exactly the work the collector adds
   (plus one level of Django's wrapper plumbing), with no database time and
   no ORM compilation in it, so the noise of a 200 µs ORM query does not
   drown a 2 µs effect. The probes' own cost, measured without the
   collector, is subtracted. Median over every query of every round. The
   call site the collector finds under the probes is checked to be the
   batch's own line: the outer probe is bench code, which the walk would
   otherwise take for the project's line and stop at after one frame. Runs
   published before the collector learnt to skip the frame that calls it
   did stop there, and so under-counted the walk.
2. **End to end**: whole batches timed per mode, for scale (the ratio to
   bare Django).

Clock for the end-to-end table: the benchmark process's own CPU time (``time.process_time_ns``), not
wall time. What the collector adds is CPU work in the application process; the
database's time is the same in every mode, and on PostgreSQL its round trip
(~100-200 µs on loopback, with a jitter of tens of µs) would drown a few µs of
difference in noise. The garbage collector is paused during each sample for the
same reason. Wall-clock medians are printed too, for scale.

Run: ``python bench/query_collector.py [--db sqlite|postgresql] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH = 100
IN_SITU_BATCHES = 5
TARGET_US = 5.0


def configure(db: str) -> None:
    import django
    from django.conf import settings

    if db == "postgresql":
        database = {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": "127.0.0.1",
            "PORT": "5432",
            "USER": "postgres",
            "NAME": "perfkit_bench",
        }
        _create_pg_database("perfkit_bench")
    else:
        database = {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
    settings.configure(
        DEBUG=False,
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "django_perfkit"],
        DATABASES={"default": database},
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        PERFKIT={"REDIS_CACHE_ALIAS": None},
        USE_TZ=True,
    )
    django.setup()


def _create_pg_database(name: str) -> None:
    import psycopg

    with psycopg.connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True
    ) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def _batches() -> tuple[Callable[[], None], Callable[[], None]]:
    """The two kinds of query, BATCH of each: a raw cursor SELECT and an ORM exists()."""
    from django.contrib.auth.models import User
    from django.db import connection

    def raw_batch() -> None:
        with connection.cursor() as cursor:
            for i in range(BATCH):
                cursor.execute("SELECT %s", [i])
                cursor.fetchone()

    def orm_batch() -> None:
        for i in range(BATCH):
            User.objects.filter(pk=i).exists()

    return raw_batch, orm_batch


def run(db: str, rounds: int) -> dict[str, Any]:
    configure(db)
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import CaptureQueriesContext, override_settings

    from django_perfkit.collectors.db import collector, install
    from django_perfkit.record import record_request

    call_command("migrate", verbosity=0)
    connection.ensure_connection()
    install(connection)

    raw_batch, orm_batch = _batches()

    def bare(batch: Callable[[], None]) -> None:
        connection.execute_wrappers.remove(collector)
        try:
            batch()
        finally:
            install(connection)

    def idle(batch: Callable[[], None]) -> None:
        batch()

    def collect(batch: Callable[[], None]) -> None:
        with record_request() as rec:
            batch()
        assert rec.db.count == BATCH

    def collect_no_sites(batch: Callable[[], None]) -> None:
        with override_settings(PERFKIT={"REDIS_CACHE_ALIAS": None, "CAPTURE_CALL_SITES": False}):
            collect(batch)

    def debug_cursor(batch: Callable[[], None]) -> None:
        connection.execute_wrappers.remove(collector)
        try:
            connection.queries_log.clear()  # it keeps 9,000 at most
            with CaptureQueriesContext(connection) as ctx:
                batch()
            assert len(ctx.captured_queries) == BATCH
        finally:
            install(connection)

    modes: dict[str, Callable[[Callable[[], None]], None]] = {
        "bare": bare,
        "idle": idle,
        "collect": collect,
        "collect, no call sites": collect_no_sites,
        "django debug cursor": debug_cursor,
    }
    kinds = {"raw SELECT": raw_batch, "ORM exists()": orm_batch}
    samples: dict[tuple[str, str], list[float]] = {(k, m): [] for k in kinds for m in modes}
    batches_per_sample = 20
    wall: dict[tuple[str, str], list[float]] = {(k, m): [] for k in kinds for m in modes}
    per_sample = BATCH * batches_per_sample
    for batch in kinds.values():  # warm-up
        for fn in modes.values():
            fn(batch)
    for _ in range(rounds):
        for kind, batch in kinds.items():
            for mode, fn in modes.items():
                gc.collect()
                gc.disable()
                try:
                    wall_start = time.perf_counter_ns()
                    cpu_start = time.process_time_ns()
                    for _ in range(batches_per_sample):
                        fn(batch)
                    cpu = time.process_time_ns() - cpu_start
                    elapsed = time.perf_counter_ns() - wall_start
                finally:
                    gc.enable()
                samples[(kind, mode)].append(cpu / 1000 / per_sample)
                wall[(kind, mode)].append(elapsed / 1000 / per_sample)
    result: dict[str, Any] = {
        "db": db,
        "rounds": rounds,
        "rows": [],
        "in_situ": in_situ(db, rounds)["rows"],
    }
    for kind in kinds:
        base = samples[(kind, "bare")]
        for mode in modes:
            per_query = samples[(kind, mode)]
            added = [m - b for m, b in zip(per_query, base, strict=True)]
            result["rows"].append(
                {
                    "kind": kind,
                    "mode": mode,
                    "median_us": statistics.median(per_query),
                    "wall_us": statistics.median(wall[(kind, mode)]),
                    "added_us": statistics.median(added),
                    "ratio": statistics.median(per_query) / statistics.median(base),
                }
            )
    return result


class _Probe:
    """Two execute wrappers around the collector: the time between them is its cost.

    ``outer`` is the outermost wrapper and ``inner`` the innermost; the collector
    (when present) sits between them. For each query, (outer span − inner span)
    is the work done between the two: the collector's own code plus one level of
    Django's wrapper plumbing, with no database time and no ORM compilation in
    it. The same difference without the collector is the probe's own overhead,
    which is subtracted.
    """

    def __init__(self) -> None:
        self.spans: list[int] = []
        self._inner = 0

    def outer(self, execute: Callable[..., Any], sql: str, params: Any, many: bool,
              context: dict[str, Any]) -> Any:  # fmt: skip
        start = time.perf_counter_ns()
        result = execute(sql, params, many, context)
        self.spans.append(time.perf_counter_ns() - start - self._inner)
        return result

    def inner(self, execute: Callable[..., Any], sql: str, params: Any, many: bool,
              context: dict[str, Any]) -> Any:  # fmt: skip
        start = time.perf_counter_ns()
        result = execute(sql, params, many, context)
        self._inner = time.perf_counter_ns() - start
        return result


def in_situ(db: str, rounds: int) -> dict[str, Any]:
    """Median ns the collector adds per query, measured around it (see _Probe)."""
    from django.db import connection
    from django.test.utils import override_settings

    from django_perfkit.collectors.db import collector
    from django_perfkit.record import record_request

    raw_batch, orm_batch = _batches()

    kinds = {"raw SELECT": raw_batch, "ORM exists()": orm_batch}
    no_sites = {"REDIS_CACHE_ALIAS": None, "CAPTURE_CALL_SITES": False}
    modes = ["probe only", "idle", "collect", "collect, no call sites"]
    spans: dict[tuple[str, str], list[int]] = {(k, m): [] for k in kinds for m in modes}
    saved = list(connection.execute_wrappers)
    try:
        for _ in range(rounds):
            for kind, batch in kinds.items():
                # The modes take turns batch by batch (100 queries), so that a
                # change in the machine's load falls on all of them alike.
                for _ in range(IN_SITU_BATCHES):
                    for mode in modes:
                        probe = _Probe()
                        middle = [] if mode == "probe only" else [collector]
                        connection.execute_wrappers[:] = [probe.outer, *middle, probe.inner]
                        gc.collect()
                        gc.disable()
                        try:
                            if mode == "idle" or mode == "probe only":
                                batch()
                            elif mode == "collect":
                                with record_request() as rec:
                                    batch()
                                # The walk must go as far as it goes without the
                                # probes: to the batch's own line, not stop at
                                # the outer probe (bench code, so "project" code).
                                site = rec.db.queries[0].site
                                if site is None or site[2] != batch.__name__:
                                    raise RuntimeError(f"call site under the probes: {site}")
                            else:
                                with override_settings(PERFKIT=no_sites), record_request():
                                    batch()
                        finally:
                            gc.enable()
                        spans[(kind, mode)] += probe.spans
    finally:
        connection.execute_wrappers[:] = saved
    rows = []
    for kind in kinds:
        base = statistics.median(spans[(kind, "probe only")])
        for mode in modes[1:]:
            rows.append(
                {
                    "kind": kind,
                    "mode": mode,
                    "added_us": (statistics.median(spans[(kind, mode)]) - base) / 1000,
                    "n": len(spans[(kind, mode)]),
                }
            )
    return {"db": db, "rows": rows}


def table(result: dict[str, Any]) -> str:
    lines = [
        f"Database: {result['db']}, {result['rounds']} interleaved rounds of "
        f"{20 * BATCH} queries per mode.",
        "",
        "| query | mode | CPU µs / query | added vs bare (CPU µs) | ratio to bare "
        "| wall µs / query |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        added = "baseline" if row["mode"] == "bare" else f"{row['added_us']:+.2f}"
        lines.append(
            f"| {row['kind']} | {row['mode']} | {row['median_us']:.2f} | {added} | "
            f"{row['ratio']:.2f}× | {row['wall_us']:.1f} |"
        )
    lines += [
        "",
        "Measured around the collector (two probe wrappers, one on each side of it: "
        "no database time and no ORM work in the span), median over "
        f"{result['in_situ'][0]['n']:,} queries per row:",
        "",
        "| query | mode | µs added per query |",
        "|---|---|---:|",
    ]
    for row in result["in_situ"]:
        lines.append(f"| {row['kind']} | {row['mode']} | {row['added_us']:.2f} |")
    collect = [r for r in result["in_situ"] if r["mode"] == "collect"]
    worst = max(r["added_us"] for r in collect)
    verdict = "met" if worst <= TARGET_US else "NOT met"
    lines += [
        "",
        f"Target: at most {TARGET_US:.0f} µs added per query: **{verdict}** "
        f"(worst median with the defaults, measured around the collector: {worst:.2f} µs).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 15)))
    parser.add_argument("--json", action="store_true", help="print JSON for bench/run.py")
    args = parser.parse_args()
    result = run(args.db, args.rounds)
    if args.json:
        import json

        print(json.dumps(result))
    else:
        print(table(result))


if __name__ == "__main__":
    main()
