"""Scale-out: two app servers on one Redis, then on a Redis Cluster, with the same results.

Two gunicorn servers (2 sync workers each: four processes, as on two
machines behind a load balancer) run the demo site (``bench/scaleout_settings.py``)
against one private PostgreSQL. The same checks run twice: with perfkit's
keys on one private Redis, then on a private Redis Cluster of three masters
(``redis-server --cluster-enabled yes`` on loopback ports, created by the
script with ``redis-cli --cluster create``). The results must not differ.

* **Rate limits, exact across processes.** For each algorithm, a route rule
  of 50 requests a minute per client (``fail="closed"``: a check Redis could
  not decide would answer 503, never pass for an allowed request). One client
  sends 200 requests over 16 concurrent connections, alternating between the
  two servers: exactly 50 must be allowed, and 150 answered 429. (The
  ``fixed`` rule's client is one whose window, staggered per client as
  django-ratelimit's, has 10 s left: a burst across a fixed window's end is
  allowed up to twice the limit, by design.)
* **``.cache()``, no stale read across servers.** A process of its own saves
  the newest article's title 10 times; after each ``save()`` returns it reads
  the article list twice from each server (the first read after a write
  misses, the second hits). A stale read is a page without the new title.
* **Cache on write.** After each save the same process adds a comment to that
  article; the stored ``comment_count`` (``peek()``: the value a page reads,
  never recomputed by the read) must equal the database's count.
* **Fleet stats.** ``manage.py perfkit_top --json`` must list all four
  processes, and count every request and rate-limit check the script sent.
* **Errors.** 5xx answers, tracebacks and perfkit's failed Redis calls in
  gunicorn's log, and ``CROSSSLOT`` (a multi-key command across slots, which a
  Cluster refuses) anywhere in it.

Run: ``python bench/scaleout.py`` (``make bench`` runs it and rewrites
docs/benchmarks.md); about a minute.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import signal
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# As a script, bench/ is first on sys.path, where bench/requests.py would
# shadow the ``requests`` library for anything that imports it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench import site, venvs  # noqa: E402
from bench.cli import report  # noqa: E402
from bench.faults import request  # noqa: E402
from bench.pgserver import PrivatePostgres  # noqa: E402
from bench.requests import Server, requirements, venv_name, versions  # noqa: E402
from bench.site import manage, site_env  # noqa: E402
from tests.redis_servers import PrivateCluster, PrivateRedis  # noqa: E402

SETTINGS = "bench.scaleout_settings"
DATABASE = "perfkit_scaleout"
SERVERS = 2
WORKERS_EACH = 2
#: bench/scaleout_settings.py's LIMIT and rules (not imported: the demo's settings
#: probe ports and print when imported).
LIMIT = 50
RULES = {"sliding": "/login/", "gcra": "/comments/", "fixed": "/search/?q=scale"}
SENT = 200
#: The rules' period (a minute), and the time a fixed window must have left for a burst.
PERIOD_S = 60
FIXED_ROOM_S = 10
CONNECTIONS = 16
WRITES = 10
#: The fleet's flush interval is 1 s: wait for every process's last flush.
FLUSH_WAIT_S = 3.0
BACKENDS = {"single": "one Redis", "cluster": "Redis Cluster, 3 masters"}

#: Runs in ``manage.py shell`` (its own process, the site's settings): writes, then reads.
CHECK_CODE = """
import json, re, urllib.request
from testproject.news.models import Article, Comment
from testproject.news.stats import comment_count

ports, writes, tag = {ports!r}, {writes!r}, {tag!r}
hit_re = re.compile(r'cache;dur=[0-9.]+;desc="?([0-9]+) hits?, ([0-9]+) miss')

def fetch(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{{port}}{{path}}", timeout=30) as answer:
        return answer.status, answer.headers.get("Server-Timing", ""), answer.read().decode()

out = dict(reads=0, stale=0, statuses=[], hits=0, misses=0, counts=0, counts_wrong=0)
article = Article.objects.published().newest_first().first()
for i in range(writes):
    title = f"scale-out {{tag}} {{i}}"
    article.title = title
    article.save(update_fields=["title"])
    for port in ports:
        for _ in range(2):
            status, timing, body = fetch(port, "/articles/")
            out["reads"] += 1
            out["statuses"].append(status)
            out["stale"] += title not in body
            found = hit_re.search(timing)
            if found:
                out["hits"] += int(found.group(1))
                out["misses"] += int(found.group(2))
    Comment.objects.create(article=article, author_name="scale-out", body=title, is_approved=True)
    out["counts"] += 1
    stored = comment_count.peek(article_id=article.pk)
    out["counts_wrong"] += stored != Comment.objects.filter(article=article).count()
print("RESULT " + json.dumps(out))
"""


async def _burst(ports: list[int], path: str, client: str) -> list[int]:
    """``SENT`` requests of one client, ``CONNECTIONS`` at a time, alternating servers."""
    queue = list(range(SENT))
    statuses: list[int] = []

    async def connection() -> None:
        while queue:
            n = queue.pop()
            status, _, _ = await request(ports[n % len(ports)], path, {"x-scaleout-client": client})
            statuses.append(status)

    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))
    return statuses


def _client(algorithm: str) -> str:
    """A new client; for ``fixed``, one whose window has ``FIXED_ROOM_S`` left.

    perfkit's fixed windows are django-ratelimit's: ``period`` seconds long,
    staggered per client by ``crc32(value) % period``. A burst that crosses a
    window's end is allowed up to twice the limit, by design (the reason the
    default is the sliding window), so the burst must fit in one window.
    """
    while True:
        client = uuid.uuid4().hex
        if algorithm != "fixed":
            return client
        offset = zlib.crc32(client.encode()) % PERIOD_S
        now = time.time()
        ts = math.floor(now)
        end = ts - ts % PERIOD_S + offset
        if end <= ts:
            end += PERIOD_S
        if end - now >= FIXED_ROOM_S:
            return client


def rate_limits(ports: list[int]) -> dict[str, Any]:
    out = {}
    for algorithm, path in RULES.items():
        statuses = asyncio.run(_burst(ports, path, _client(algorithm)))
        counts: dict[str, int] = {}
        for status in statuses:
            counts[str(status)] = counts.get(str(status), 0) + 1
        out[algorithm] = counts
    return out


def check_caches(python: str, env: dict[str, str], ports: list[int]) -> dict[str, Any]:
    code = CHECK_CODE.format(ports=ports, writes=WRITES, tag=uuid.uuid4().hex[:8])
    out = manage(python, env, "shell", "-c", code)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(line[len("RESULT ") :])  # type: ignore[no-any-return]


def fleet(python: str, env: dict[str, str]) -> dict[str, Any]:
    time.sleep(FLUSH_WAIT_S)
    out = manage(python, env, "perfkit_top", "--json", "--minutes", "5")
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    snapshot = json.loads(out.stdout)
    routes = {row["route"]: row["requests"] for row in snapshot.get("routes", [])}
    groups = {
        row["group"]: {"checked": row["checked"], "limited": row["limited"]}
        for row in snapshot.get("ratelimits", [])
    }
    return {
        "servers": len(snapshot.get("servers", {})),
        "per_server": sorted(s["requests"] for s in snapshot.get("servers", {}).values()),
        "routes": routes,
        "groups": groups,
    }


_FAILED_CALL = "perfkit: Redis call failed: "


def scan_logs(logs: list[Path]) -> dict[str, int]:
    text = "\n".join(log.read_text(errors="replace") for log in logs if log.exists())
    return {
        "crossslot": text.count("CROSSSLOT"),
        "failed_calls": text.count(_FAILED_CALL),
        "tracebacks": text.count("Traceback"),
        "worker_timeouts": text.count("WORKER TIMEOUT"),
    }


def run_backend(
    backend: str, python: str, base: dict[str, str], redis_url: str, tmp: Path
) -> dict[str, Any]:
    env = dict(base)
    if backend == "cluster":
        env["BENCH_REDIS_CLUSTER_URL"] = redis_url
    logs = [tmp / f"{backend}-{i}.log" for i in range(SERVERS)]
    servers = [Server("perfkit", python, env, log, workers=WORKERS_EACH) for log in logs]
    try:
        for server in servers:
            server.start()
        ports = [server.port for server in servers]
        result: dict[str, Any] = {"rate_limits": rate_limits(ports)}
        result["caches"] = check_caches(sys.executable, env, ports)
        result["fleet"] = fleet(sys.executable, env)
    finally:
        for server in servers:
            server.stop()
    result["log"] = scan_logs(logs)
    return result


def run() -> dict[str, Any]:
    python = venvs.python_for(venv_name("perfkit"), requirements("perfkit"))
    results: dict[str, Any] = {
        "servers": SERVERS,
        "workers_each": WORKERS_EACH,
        "limit": LIMIT,
        "sent": SENT,
        "writes": WRITES,
        "versions": versions(python),
        "backends": {},
    }
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = time.monotonic()
    pg, redis, cluster = PrivatePostgres(), PrivateRedis(), PrivateCluster()
    tmp = Path(tempfile.mkdtemp(prefix="perfkit-bench-scaleout-"))
    try:
        pg.start()
        redis.start()
        cluster.start(str(tmp))
        base = site_env(SETTINGS, pg, DATABASE, redis.url)
        try:
            site.prepare(base)
        except RuntimeError as exc:
            return {**results, "error": str(exc)}
        for backend, url in (("single", redis.url), ("cluster", cluster.url)):
            print(f"bench: scale-out on {BACKENDS[backend]} ...", file=sys.stderr, flush=True)
            try:
                results["backends"][backend] = run_backend(backend, python, base, url, tmp)
            except Exception as exc:  # reported; the other backend still runs
                results["backends"][backend] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        cluster.stop()
        redis.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    results["wall_s"] = round(time.monotonic() - began, 1)
    return results


# -- the table --------------------------------------------------------------------------


def _statuses(counts: dict[str, int]) -> str:
    return " + ".join(
        f"{n}×{code if code != '0' else 'no answer'}" for code, n in sorted(counts.items())
    )


_ROUTE_OF = {"sliding": "login", "gcra": "comments", "fixed": "search"}


def _rows(results: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    limit, sent = results["limit"], results["sent"]
    rows: list[tuple[str, dict[str, str]]] = []
    cells: dict[str, dict[str, str]] = {}
    for backend, r in results["backends"].items():
        c: dict[str, str] = {}
        cells[backend] = c
        if "error" in r:
            c["error"] = r["error"]
            continue
        for algorithm, counts in r["rate_limits"].items():
            allowed = counts.get("200", 0)
            mark = "exact" if allowed == limit and counts.get("429", 0) == sent - limit else "WRONG"
            c[f"limit {algorithm}"] = f"{_statuses(counts)} ({mark})"
        caches = r["caches"]
        if "error" in caches:
            c["cache"] = c["onwrite"] = f"error: {caches['error']}"
        else:
            bad = [s for s in caches["statuses"] if s != 200]
            c["cache"] = (
                f"{caches['stale']} stale of {caches['reads']} reads; lookups: "
                f"{caches['hits']} hits, {caches['misses']} misses"
                + (f"; {len(bad)} not 200" if bad else "")
            )
            c["onwrite"] = (
                f"{caches['counts'] - caches['counts_wrong']} of {caches['counts']} right"
            )
        f = r["fleet"]
        if "error" in f:
            c["fleet"] = f"error: {f['error']}"
        else:
            expected = results["servers"] * results["workers_each"]
            counted = []
            for algorithm in RULES:
                group = f["groups"].get(f"scaleout.{algorithm}", {})
                route = next(
                    (n for route, n in f["routes"].items() if _ROUTE_OF[algorithm] in route), 0
                )
                counted.append(
                    f"{algorithm} {route} requests, {group.get('checked', 0)} checked, "
                    f"{group.get('limited', 0)} limited"
                )
            c["fleet"] = (
                f"{f['servers']} of {expected} processes "
                f"({', '.join(str(n) for n in f['per_server'])} requests); " + "; ".join(counted)
            )
        log = r["log"]
        c["errors"] = (
            f"{log['crossslot']} CROSSSLOT, {log['failed_calls']} failed Redis calls, "
            f"{log['tracebacks']} tracebacks, {log['worker_timeouts']} worker timeouts"
        )
    labels = {
        **{f"limit {a}": f"`{a}` rule, {limit}/min: {sent} requests of one client" for a in RULES},
        "cache": f"`.cache()`: article list after each of {results['writes']} saves, 2 reads "
        "per server (lookups: `.cache()` and on-write, from `Server-Timing`)",
        "onwrite": "cache on write: stored `comment_count` after each new comment",
        "fleet": "`perfkit_top --json`: processes, and what was counted",
        "errors": "gunicorn logs",
    }
    for key, label in labels.items():
        rows.append(
            (label, {b: cells[b].get(key, f"did not run: {cells[b].get('error')}") for b in cells})
        )
    return rows


def table(results: dict[str, Any]) -> str:
    if "error" in results and not results.get("backends"):
        return f"Not run: {results['error']}."
    backends = list(results["backends"])
    shown = results["versions"]
    lines = [
        f"{results['servers']} gunicorn servers × {results['workers_each']} sync workers, "
        f"one PostgreSQL; Django {shown.get('Django', '?')}, "
        f"gunicorn {shown.get('gunicorn', '?')}.",
        "",
        "| check | " + " | ".join(BACKENDS[b] for b in backends) + " |",
        "|---|" + "---|" * len(backends),
    ]
    for label, cells in _rows(results):
        lines.append(f"| {label} | " + " | ".join(cells[b] for b in backends) + " |")
    same = _same(results)
    lines += [
        "",
        f"Same results on both: {same}." if same else "",
        f"The whole script took {results.get('wall_s', 0):.0f} s.",
        "",
    ]
    return "\n".join(line for line in lines if line is not None)


def _same(results: dict[str, Any]) -> str:
    runs = [r for r in results["backends"].values() if "error" not in r]
    if len(runs) != 2:
        return ""
    a, b = runs
    keys = [
        a["rate_limits"] == b["rate_limits"],
        (a["caches"].get("stale"), a["caches"].get("counts_wrong"))
        == (b["caches"].get("stale"), b["caches"].get("counts_wrong")),
        a["fleet"].get("groups") == b["fleet"].get("groups"),
    ]
    return "yes" if all(keys) else "no (see the rows above)"


if __name__ == "__main__":
    report(run, table)
