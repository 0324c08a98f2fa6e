"""Cache on write: reading a value the writes keep, and what the writes pay for it.

One process against a private PostgreSQL (``fsync=off``) and a private Redis;
``bench/onwriteapp``: 10 articles and their comments. The value is an
article's comment count and its three latest commenters (two queries).

* **Read**: median µs of ``sync_stats(article_id=k)`` (a hit) over the 10
  articles in turn, against the floor the issue names: a Redis ``GET`` of the
  same pickled value and unpickling it (redis-py with hiredis, same server),
  and against calling the function uncached. ``get_many`` of the 10 keys
  against an ``MGET`` and 10 unpickles. The floor and perfkit alternate call
  by call (each goes first half of the time); the median of each of 15
  rounds is taken, and the median of those is shown. A background process
  sends Redis a ``PING`` every 0.2 ms, as in the cache benchmark.
* **Writes**: 1,000 comment inserts spread over the 10 articles (each its own
  autocommit transaction), to a table with no on-write function (perfkit's
  write watcher only), one recomputed at commit, and one with ``defer=True``
  (``DEFER_DELAY`` 0.1 s): median µs per insert, how many recomputes ran, and
  whether every stored value is exact once the deferred queue is flushed.

None of the anchors recomputes values on write (cacheops' ``cached_as`` and
cachalot invalidate on write and compute on the next read), so the floor is
the comparison here.

Run: ``python bench/onwrite.py`` (``make bench`` runs it and rewrites
docs/benchmarks.md).
"""

from __future__ import annotations

import pickle
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench.cache import _KEEP_BUSY  # noqa: E402
from bench.cli import report  # noqa: E402
from bench.pgserver import PrivatePostgres  # noqa: E402
from tests.redis_servers import PrivateRedis  # noqa: E402

ARTICLES = 10
WRITES = 1000
ROUNDS = 15
READS_PER_KEY = 40


def _setup(pg: PrivatePostgres, redis_url: str) -> None:
    import django
    import psycopg
    from django.conf import settings

    with psycopg.connect(
        host="127.0.0.1", port=pg.port, user="postgres", dbname="postgres", autocommit=True
    ) as admin:
        admin.execute("CREATE DATABASE bench_onwrite")
    settings.configure(
        INSTALLED_APPS=["django_perfkit", "django.contrib.contenttypes", "onwriteapp"],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "HOST": "127.0.0.1",
                "PORT": pg.port,
                "USER": "postgres",
                "NAME": "bench_onwrite",
            }
        },
        CACHES={"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}},
        PERFKIT={
            "REDIS_URL": redis_url,
            "REDIS_CACHE_ALIAS": None,
            "KEY_PREFIX": "bench",
            "COLLECT_QUERIES": False,
        },
        USE_TZ=True,
        SECRET_KEY="bench",
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    )
    django.setup()
    from django.core.management import call_command

    call_command("migrate", run_syncdb=True, verbosity=0)
    import onwriteapp.stats  # noqa: F401  (registers the functions, as a ready() would)


def _median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1_000_000


def reads(redis_url: str) -> dict[str, float]:
    import redis
    from onwriteapp.models import Article, SyncComment
    from onwriteapp.stats import sync_stats

    articles = list(Article.objects.all())
    for i, article in enumerate(articles):
        for j in range(i % 4 + 1):
            SyncComment.objects.create(article=article, author_name=f"a{j}", body="x")
    keys = [a.pk for a in articles]
    values = {pk: sync_stats(article_id=pk) for pk in keys}  # warm
    assert values == {pk: sync_stats.func(article_id=pk) for pk in keys}  # type: ignore[call-arg]
    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/1")
    for pk, value in values.items():
        client.set(f"floor:{pk}", pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    calls = [{"article_id": pk} for pk in keys]
    floor_names = [f"floor:{pk}" for pk in keys]

    ops = {
        "floor": lambda pk: pickle.loads(client.get(f"floor:{pk}")),
        "perfkit": lambda pk: sync_stats(article_id=pk),
        "uncached": lambda pk: sync_stats.func(article_id=pk),  # type: ignore[call-arg]
    }
    many = {
        "floor_many": lambda: [pickle.loads(v) for v in client.mget(floor_names)],
        "perfkit_many": lambda: sync_stats.get_many(calls),
    }
    rounds: dict[str, list[float]] = {name: [] for name in [*ops, *many]}
    for _ in range(ROUNDS):
        # Call by call, the configurations alternate: a burst of noise on this
        # shared machine falls on each alike.
        # (Each goes first half of the time; the uncached function, whose
        # queries would slow whatever follows, runs in a batch of its own.)
        samples: dict[str, list[float]] = {name: [] for name in rounds}
        for i in range(READS_PER_KEY):
            for pk in keys:
                pair = ("floor", "perfkit") if (i + pk) % 2 else ("perfkit", "floor")
                for name in pair:
                    started = time.perf_counter()
                    ops[name](pk)
                    samples[name].append(time.perf_counter() - started)
            pair = ("floor_many", "perfkit_many") if i % 2 else ("perfkit_many", "floor_many")
            for name in pair:
                started = time.perf_counter()
                many[name]()
                samples[name].append(time.perf_counter() - started)
        for pk in keys:
            started = time.perf_counter()
            ops["uncached"](pk)
            samples["uncached"].append(time.perf_counter() - started)
        for name, values in samples.items():
            rounds[name].append(_median_us(values))
    client.close()
    return {name: statistics.median(values) for name, values in rounds.items()}


def writes() -> dict[str, Any]:
    from django.db import connection
    from onwriteapp.models import Article, DeferredComment, PlainComment, SyncComment
    from onwriteapp.stats import deferred_stats, sync_stats

    from django_perfkit.cache import flush_deferred
    from django_perfkit.cache.onwrite import deferred

    articles = list(Article.objects.all())
    functions = {"none": None, "at commit": sync_stats, "defer=True": deferred_stats}
    tables = {"none": PlainComment, "at commit": SyncComment, "defer=True": DeferredComment}
    for function in (sync_stats, deferred_stats):
        for article in articles:
            function(article_id=article.pk)  # entries exist: the writes keep them
    assert flush_deferred(timeout=30)
    result: dict[str, Any] = {}
    # Interleaved in blocks of 50 inserts, so that machine noise falls on each alike.
    samples: dict[str, list[float]] = {name: [] for name in functions}
    before = {name: (f.recomputes if f else 0) for name, f in functions.items()}
    coalesced_before = deferred.worker.coalesced
    started_all = time.perf_counter()
    for block in range(WRITES // 50):
        for name, model in tables.items():
            for i in range(50):
                n = block * 50 + i
                article = articles[n % ARTICLES]
                started = time.perf_counter()
                model.objects.create(article=article, author_name=f"w{n}", body="x")
                samples[name].append(time.perf_counter() - started)
    elapsed = time.perf_counter() - started_all
    flushed_at = time.perf_counter()
    assert flush_deferred(timeout=60)
    flush_seconds = time.perf_counter() - flushed_at
    for name, function in functions.items():
        model = tables[name]
        row: dict[str, Any] = {"insert_us": _median_us(samples[name])}
        if function is not None:
            row["recomputes"] = function.recomputes - before[name]
            exact = all(
                function.peek(article_id=a.pk) == function.func(article_id=a.pk)  # type: ignore[call-arg]
                for a in articles
            )
            row["exact"] = exact
            row["count_ok"] = all(
                function.peek(article_id=a.pk)["count"]  # type: ignore[index]
                == model.objects.filter(article=a).count()
                for a in articles
            )
        result[name] = row
    result["writes"] = WRITES
    result["coalesced"] = deferred.worker.coalesced - coalesced_before
    result["elapsed_s"] = elapsed
    result["flush_s"] = flush_seconds
    connection.close()
    return result


def run() -> dict[str, Any]:
    pg = PrivatePostgres()
    server = PrivateRedis()
    pg.start()
    server.start()
    busy = subprocess.Popen([sys.executable, "-c", _KEEP_BUSY, server.url])
    try:
        _setup(pg, server.url)
        from onwriteapp.models import Article

        Article.objects.bulk_create(Article(title=f"article {i}") for i in range(ARTICLES))
        read = reads(server.url)
        write = writes()
        from django.db import connections

        connections.close_all()
        return {"reads": read, "writes": write}
    finally:
        busy.kill()
        busy.wait()
        server.stop()
        pg.stop()


def _f(value: float) -> str:
    return f"{value:,.0f}"


def table(results: dict[str, Any]) -> str:
    r = results["reads"]
    w = results["writes"]
    lines = [
        "### Reading a value kept by writes (median µs)",
        "",
        "| | one value | ratio to the floor | 10 values (`get_many`) | ratio to the floor |",
        "|---|---|---|---|---|",
        f"| floor: Redis `GET` / `MGET` + unpickle | {_f(r['floor'])} | 1.00× "
        f"| {_f(r['floor_many'])} | 1.00× |",
        f"| `@cached_on_write` hit | {_f(r['perfkit'])} | {r['perfkit'] / r['floor']:.2f}× "
        f"| {_f(r['perfkit_many'])} | {r['perfkit_many'] / r['floor_many']:.2f}× |",
        f"| the function, uncached (2 queries) | {_f(r['uncached'])} "
        f"| {r['uncached'] / r['floor']:.2f}× | | |",
        "",
        f"### {w['writes']:,} comment inserts over 10 articles",
        "",
        "| recomputed | µs per insert (median) | recomputes | exact after flush |",
        "|---|---|---|---|",
    ]
    for name in ("none", "at commit", "defer=True"):
        row = w[name]
        if name == "none":
            lines.append(f"| no on-write function | {_f(row['insert_us'])} | | |")
            continue
        exact = "yes" if row["exact"] and row["count_ok"] else "NO"
        lines.append(
            f"| {name} | {_f(row['insert_us'])} | {row['recomputes']:,} of "
            f"{w['writes']:,} writes | {exact} |"
        )
    lines += [
        "",
        f"With `defer=True`, {w['coalesced']:,} writes joined a recompute already waiting; "
        f"the flush at the end took {w['flush_s'] * 1000:,.0f} ms.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    report(run, table)
