"""Queryset caching side by side: perfkit ``.cache()``, django-cacheops, django-cachalot.

Every competitor runs in a process (and, for cacheops and cachalot, a
virtualenv) of its own, against its own database on one private PostgreSQL
(``fsync=off``, ``max_connections=300``) and its own database number on one
private Redis, with the same tables and data (``bench/cacheapp``: 2,000 items in
20 categories):

* **Hit latency**: median µs of ``get(pk=...)``, ``filter(category)
  .select_related("author")[:20]`` and ``count()`` after warm-up, over 20
  (or 10) keys in turn; "none" is the uncached query, "floor" a Redis ``GET``
  plus unpickling of the same result. perfkit is used as its docs advise,
  ``.cache()`` first (``Item.objects.cache().filter(...)...``), so that a hit
  names the steps after it without building them; ``perfkit-key`` names its
  entries (``.cache(key=...)``); ``perfkit-last`` builds the whole queryset
  and calls ``.cache()`` last. The floor's GET goes through redis-py's client;
  perfkit sends its commands on a connection each thread keeps, without
  redis-py's per-call machinery, and polls for their replies (``REDIS_SPIN``),
  so the floor's GET sent that way is shown too. perfkit's three and the
  floors take turns call by call in one process, with Django building the same querysets (what any
  ORM cache pays before it can look), so that the drift of a loopback round
  trip on this machine (tens of µs from one minute to the next) moves them
  alike; the others (their own virtualenvs, or perfkit not installed) run in
  a process each within the same round. The median of the rounds is shown.
* **save()**: median µs, SELECTs and Redis round trips per save. The
  uncached save runs in another process, minutes apart; for perfkit the same
  saves are also timed in one process with its write hook (the execute wrapper
  that bumps the tokens after the write) on and off, call by call in turn,
  which is what perfkit adds to a save with the machine's drift on both.
* **save() on a durable PostgreSQL**: the same saves against a second
  private server with PostgreSQL's defaults for durability (``fsync``,
  ``synchronous_commit`` and ``full_page_writes`` on), where a commit waits for
  its WAL to reach the disk, as on a production database; 3 rounds of a
  process per ORM cache, the median shown. The main server runs with them off,
  so that its figures are about the caches and not about this machine's disk;
  that makes its uncached save the cheapest a save can be, and perfkit's fixed
  cost (one Redis round trip after the write) the largest share of it.
* **What one round trip costs a save**: the same saves, call by call in turn
  in one process, without perfkit's write hook, with a ``PING`` and then with
  perfkit's bump script (``EVALSHA``, the same keys) sent on a bare socket
  right after the statement, and with perfkit's hook; 3 rounds on each
  server. The bare socket's rows are the floor of any design that bumps in one
  round trip after the write; the hook's row less the script's is what
  perfkit's Python (the watcher, the gateway, redis-py's connection) adds.
* During the latency rounds a background process sends Redis a ``PING`` every
  0.2 ms, as other app servers would: an idle Redis on this machine answers its
  first command after a pause 100-150 µs late (its process has to be woken up),
  which is a cost of the benchmark's idleness, not of any cache.
* **Hit ratio**: 5,000 operations, 95% reads of 10 category lists, 5% saves of
  rows in the other 10 categories.
* **Stale reads** per 1,000: 3 reader processes and 1 writer saving one row
  300 times about 2 ms apart (``cache_worker.py race``).
* **Stampede**: 100 threads miss the same 50 ms query at once; how many ran it.
* **Memory**: Redis bytes and keys per cached query over 2,000 small queries.

Run: ``python bench/cache.py`` (``make bench`` runs it and rewrites
docs/benchmarks.md).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import venvs  # noqa: E402
from bench.cli import report  # noqa: E402
from bench.pgserver import PrivatePostgres  # noqa: E402
from tests.redis_servers import PrivateRedis  # noqa: E402

WORKER = ROOT / "bench" / "cache_worker.py"
COMPETITORS = {
    # hiredis everywhere: perfkit's own environment has it (the dev extra).
    "cacheops": [
        "Django>=5.2,<6",
        "django-cacheops==7.2",
        "psycopg[binary]>=3.1",
        "redis>=5",
        "hiredis>=3",
    ],
    "cachalot": [
        "Django>=5.2,<6",
        "django-cachalot==2.9.1",
        "django-redis==7.0.0",
        "psycopg[binary]>=3.1",
        "hiredis>=3",
    ],
}
CACHES = ["perfkit", "perfkit-key", "cacheops", "cachalot"]
IMPLS = ["none", *CACHES]
#: Timed call by call in turn in one process ("raw" is the floor; "build" Django
#: building the same querysets, which every ORM cache pays before it can look).
TOGETHER = ["perfkit", "perfkit-key", "perfkit-last", "raw", "raw-direct", "build"]
LATENCY_ROUNDS = 2
SAVE_ROUNDS = 3
#: PostgreSQL's own defaults, put back over the private server's fsync=off.
DURABLE = "-c fsync=on -c synchronous_commit=on -c full_page_writes=on"
RACE_READERS = 3


#: Other clients of the same Redis: a PING every 0.2 ms.
_KEEP_BUSY = """
import sys, time, redis
client = redis.Redis.from_url(sys.argv[1])
while True:
    client.ping()
    time.sleep(0.0002)
"""


def python_for(impl: str) -> str:
    return venvs.python_for(impl, COMPETITORS.get(impl))


class Run:
    def __init__(self) -> None:
        self.pg = PrivatePostgres()
        self.redis = PrivateRedis()

    def __enter__(self) -> Run:
        self.pg.start()
        self.redis.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.redis.stop()
        self.pg.stop()

    def url(self, impl: str) -> str:
        return f"{self.redis.url.rsplit('/', 1)[0]}/{(IMPLS + ['raw']).index(impl)}"

    def command(self, impl: str, scenario: str, *extra: str, pg: Any = None) -> list[str]:
        port = (pg or self.pg).port
        return [python_for(impl), str(WORKER), impl, scenario, str(port), self.url(impl),
                *extra]  # fmt: skip

    def worker(
        self, impl: str, scenario: str, *extra: str, timeout: float = 600, pg: Any = None
    ) -> Any:
        out = subprocess.run(
            self.command(impl, scenario, *extra, pg=pg),
            capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        )  # fmt: skip
        if out.returncode != 0:
            tail = out.stderr.strip().splitlines()[-1:] or ["?"]
            return {"error": tail[0]}
        return json.loads(out.stdout.strip().splitlines()[-1])

    def race(self, impl: str) -> dict[str, Any]:
        readers = [
            subprocess.Popen(
                self.command(impl, "race", "reader"), stdout=subprocess.PIPE, cwd=ROOT, text=True
            )
            for _ in range(RACE_READERS)
        ]
        writer = self.worker(impl, "race", "writer")
        results = []
        for reader in readers:
            out, _ = reader.communicate(timeout=300)
            results.append(json.loads(out.strip().splitlines()[-1]))
        reads = sum(r["reads"] for r in results)
        stale = sum(r["stale"] for r in results)
        return {
            "reads": reads,
            "stale": stale,
            "per_1000": 1000 * stale / reads if reads else float("nan"),
            "final_current": all(r["final_current"] for r in results),
            "writer": writer,
        }


def run() -> dict[str, Any]:
    results: dict[str, Any] = {}
    for impl in COMPETITORS:
        python_for(impl)
    with Run() as bench:
        for impl in IMPLS:
            bench.pg.createdb(f"bench_{impl.replace('-', '_')}")
            bench.worker(impl, "seed")
        rounds: dict[str, list[dict[str, float]]] = {
            impl: [] for impl in dict.fromkeys([*IMPLS, *TOGETHER])
        }
        background = subprocess.Popen([sys.executable, "-c", _KEEP_BUSY, bench.redis.url])
        try:
            for _ in range(LATENCY_ROUNDS):
                # perfkit's two, the floor and the queryset building take turns
                # call by call in one process (one virtualenv, one database);
                # the others run in a process each within the same round.
                together = bench.worker("perfkit", "latency-together", ",".join(TOGETHER))
                for impl in TOGETHER:
                    rounds[impl].append(together.get(impl, together))
                for impl in IMPLS:
                    if impl not in TOGETHER:
                        rounds[impl].append(bench.worker(impl, "latency"))
        finally:
            background.terminate()
            background.wait()
        results["latency"] = {
            impl: {
                key: statistics.median(r[key] for r in rs if key in r)
                for key in rs[0]
                if key != "error" and any(key in r for r in rs)
            }
            for impl, rs in rounds.items()
            if rs and "error" not in rs[0]
        }
        results["errors"] = {
            impl: rs[0]["error"] for impl, rs in rounds.items() if rs and "error" in rs[0]
        }
        results["hitratio"] = {impl: bench.worker(impl, "hitratio") for impl in IMPLS}
        results["race"] = {impl: bench.race(impl) for impl in CACHES}
        results["stampede"] = {impl: bench.worker(impl, "stampede") for impl in IMPLS}
        results["memory"] = {impl: bench.worker(impl, "memory") for impl in CACHES}
        floors = {"fsync off": _rounds(bench.worker, "perfkit", "save-floor")}
        results["durable_saves"] = durable_saves(bench, floors)
        results["save_floor"] = floors
    return results


def _rounds(worker: Any, impl: str, scenario: str, **kwargs: Any) -> dict[str, float]:
    """The median of SAVE_ROUNDS runs of a worker scenario (failed runs left out)."""
    runs = [worker(impl, scenario, **kwargs) for _ in range(SAVE_ROUNDS)]
    done = [r for r in runs if "error" not in r]
    if not done:
        return runs[0]  # type: ignore[no-any-return]
    return {key: statistics.median(r[key] for r in done) for key in done[0]}


def durable_saves(bench: Run, floors: dict[str, Any]) -> dict[str, Any]:
    """Each ORM cache's saves against a PostgreSQL that waits for its disk
    (and, into ``floors``, what one round trip costs a save there)."""
    durable = PrivatePostgres(DURABLE)
    durable.start()
    try:
        if durable.psql("postgres", "SHOW fsync") != "on":
            raise RuntimeError("the durable server did not take fsync=on")
        for impl in IMPLS:
            durable.createdb(f"bench_{impl.replace('-', '_')}")
            bench.worker(impl, "seed", pg=durable)
        rounds: dict[str, list[dict[str, float]]] = {impl: [] for impl in IMPLS}
        for _ in range(SAVE_ROUNDS):
            for impl in IMPLS:
                rounds[impl].append(bench.worker(impl, "saves", pg=durable))
        floors["PostgreSQL's defaults"] = _rounds(bench.worker, "perfkit", "save-floor", pg=durable)
    finally:
        durable.stop()
    # A round that failed is left out (the others still make a median); an
    # ORM cache whose every round failed is shown as failed.
    done = {impl: [r for r in rs if "error" not in r] for impl, rs in rounds.items()}
    return {
        impl: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
        for impl, rs in done.items()
        if rs
    }


def _f(value: Any, digits: int = 0) -> str:
    if not isinstance(value, (int, float)):
        return "n/a"
    return f"{value:,.{digits}f}"


def table(results: dict[str, Any]) -> str:
    lat = results["latency"]
    none, floor, build = lat.get("none", {}), lat.get("raw", {}), lat.get("build", {})
    lines = [
        "### Hit latency (median µs; ratios to the uncached query and to the floor)",
        "",
        "| | get(pk) | filter()[:20] + select_related | count() | save() | SELECTs / save "
        "| Redis round trips / save |",
        "|---|---|---|---|---|---|---|",
    ]
    for impl in ["none", "perfkit", "perfkit-key", "perfkit-last", "cacheops", "cachalot"]:
        row = lat.get(impl)
        if row is None and impl == "perfkit-last":
            continue
        if row is None:
            lines.append(f"| {impl} | {results['errors'].get(impl, 'failed')} | | | | | |")
            continue
        cells = []
        for op in ("get_us", "list_us", "count_us"):
            value = row.get(op)
            if impl == "none":
                cells.append(_f(value))
            else:
                ratio_none = value / none[op] if value and none.get(op) else float("nan")
                ratio_floor = value / floor[op] if value and floor.get(op) else float("nan")
                cells.append(f"{_f(value)} ({ratio_none:.2f}× / {ratio_floor:.2f}×)")
        if "save_us" not in row:
            lines.append(f"| {impl} | {' | '.join(cells)} | (perfkit's) | | |")
            continue
        save_ratio = row["save_us"] / none["save_us"] if none.get("save_us") else float("nan")
        save = _f(row["save_us"]) + ("" if impl == "none" else f" ({save_ratio:.2f}×)")
        if row.get("save_unhooked_us"):
            hooked = row["save_hooked_us"] / row["save_unhooked_us"]
            save += (
                f"; in turn with its hook off: {_f(row['save_hooked_us'])} vs "
                f"{_f(row['save_unhooked_us'])} ({hooked:.2f}×)"
            )
        lines.append(
            f"| {impl} | {' | '.join(cells)} | {save} | {row['save_selects']:.2f} "
            f"| {row['save_redis_calls']:.2f} |"
        )
    lines.append(
        f"| floor (Redis GET + unpickle) | {_f(floor.get('get_us'))} "
        f"({_f(floor.get('get_bytes'))} B) | {_f(floor.get('list_us'))} "
        f"({_f(floor.get('list_bytes'))} B) | {_f(floor.get('count_us'))} | | | |"
    )
    direct = lat.get("raw-direct", {})
    lines.append(
        "| floor's GET on a kept connection, polled for (perfkit's path) "
        f"| {_f(direct.get('get_us'))} | {_f(direct.get('list_us'))} "
        f"| {_f(direct.get('count_us'))} | | | |"
    )
    lines.append(
        f"| building the queryset (Django, not run) | {_f(build.get('get_us'))} "
        f"| {_f(build.get('list_us'))} | {_f(build.get('count_us'))} | | | |"
    )
    durable = results.get("durable_saves", {})
    base = durable.get("none", {}).get("save_us")
    lines += [
        "",
        "### save() on a durable PostgreSQL (fsync, synchronous_commit, full_page_writes on)",
        "",
        "| | save() µs (ratio to uncached) | perfkit in turn with its hook on / off "
        "| SELECTs / save | Redis round trips / save |",
        "|---|---|---|---|---|",
    ]
    for impl in IMPLS:
        row = durable.get(impl)
        if row is None:
            lines.append(f"| {impl} | failed | | | |")
            continue
        ratio = "" if impl == "none" or not base else f" ({row['save_us'] / base:.2f}×)"
        hooked = (
            f"{_f(row['save_hooked_us'])} / {_f(row['save_unhooked_us'])} "
            f"({row['save_hooked_us'] / row['save_unhooked_us']:.2f}×)"
            if row.get("save_unhooked_us")
            else ""
        )
        lines.append(
            f"| {impl} | {_f(row['save_us'])}{ratio} | {hooked} | {row['save_selects']:.2f} "
            f"| {row['save_redis_calls']:.2f} |"
        )
    lines += [
        "",
        "### What one Redis round trip costs a save (median µs; ratio to the save without it)",
        "",
        "| server | save() without perfkit's hook | + `PING` on a bare socket "
        "| + perfkit's bump script on a bare socket | perfkit's hook |",
        "|---|---|---|---|---|",
    ]
    for server, row in results.get("save_floor", {}).items():
        if "error" in row or not row.get("unhooked_us"):
            lines.append(f"| {server} | {row.get('error', 'failed')} | | | |")
            continue
        base_us = row["unhooked_us"]
        cells = [
            f"{_f(row[key])} ({row[key] / base_us:.2f}×)"
            for key in ("ping_us", "bump_script_us", "perfkit_us")
        ]
        lines.append(f"| {server} | {_f(base_us)} | {' | '.join(cells)} |")
    lines += [
        "",
        "### Hit ratio, stale reads, stampede, memory",
        "",
        "| | hit ratio (95% reads / 5% other-row writes) | ops/s | stale reads / 1,000 "
        "(reads) | read after the writer stopped | stampede: DB executions of 100 "
        "(3 rounds) | Redis bytes / cached query | keys / query |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for impl in IMPLS:
        hit = results["hitratio"].get(impl, {})
        race = results["race"].get(impl, {})
        stampede = results["stampede"].get(impl, {})
        memory = results["memory"].get(impl, {})
        runs = stampede.get("rounds", [])
        execs = ", ".join(str(r["db_executions"]) for r in runs) or "n/a"
        errors = sum(r.get("errors", 0) for r in runs)
        if errors:
            execs += f" ({errors} errors)"
        stale = f"{race['per_1000']:.1f} ({race['reads']:,})" if "per_1000" in race else "n/a"
        final = {True: "current", False: "STALE"}.get(race.get("final_current"), "n/a")
        lines.append(
            f"| {impl} | {_f(hit.get('hit_ratio', float('nan')) * 100, 1)}% "
            f"| {_f(hit.get('ops_per_s'))} | {stale} | {final} | {execs} "
            f"| {_f(memory.get('bytes'))} | {_f(memory.get('keys'), 2)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    report(run, table)
