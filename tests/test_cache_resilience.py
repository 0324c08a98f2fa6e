""".cache() under concurrency and failure: stale reads, outages, eviction, stampedes, async."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import connections
from django.db.models import Count
from django.test import override_settings
from model_bakery import baker

from django_perfkit.cache import entries
from django_perfkit.record import record_request
from django_perfkit.redis import get_gateway
from testproject.news.models import Article, Author, Category
from tests.redis_servers import BlackHole, PrivateCluster, PrivateRedis
from tests.settings import KEY_PREFIX, RUN_ID

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def article() -> Article:
    category = baker.make(Category)
    author = baker.make(Author)
    baker.make(Article, category=category, author=author, _quantity=3)
    return baker.make(Article, category=category, author=author, title="v0")


def _cached_list(article: Article) -> list[Article]:
    return list(Article.objects.filter(category_id=article.category_id).cache())


# -- stale reads under a concurrent writer (separate processes) ------------------------


@pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"),
    reason="processes cannot share an in-memory SQLite database",
)
def test_no_stale_reads_with_concurrent_reader_and_writer_processes(article: Article) -> None:
    env = {**os.environ, "PERFKIT_TEST_RUN_ID": RUN_ID, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(ROOT / "tests" / "cache_race_worker.py")]
    pk = ["--pk", str(article.pk)]
    readers = [
        subprocess.Popen([*command, "reader", *pk], env=env, stdout=subprocess.PIPE, cwd=ROOT)
        for _ in range(3)
    ]
    time.sleep(0.5)  # readers warm up and fill the cache
    writer = subprocess.run(
        [*command, "writer", *pk, "--count", "200", "--gap", "0.003"],
        env=env, cwd=ROOT, timeout=120, check=True,
    )  # fmt: skip
    assert writer.returncode == 0
    results = []
    for reader in readers:
        out, _ = reader.communicate(timeout=60)
        assert reader.returncode == 0
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    assert all(r["reads"] > 50 for r in results), results  # they really raced
    assert sum(r["stale"] for r in results) == 0, results
    assert all(r["final_current"] for r in results), results


# -- Redis outages -----------------------------------------------------------------------


@pytest.fixture
def private_redis() -> PrivateRedis:
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


def _perfkit_on(server: PrivateRedis, **extra: object) -> override_settings:
    return override_settings(
        PERFKIT={
            "REDIS_URL": server.url,
            "KEY_PREFIX": KEY_PREFIX,
            "REDIS_TIMEOUT": 0.05,
            "BREAKER_FAILURES": 2,
            "BREAKER_COOLDOWN": 0.2,
            **extra,
        }
    )


def test_stopped_redis_reads_fall_through_to_the_database(
    article: Article, private_redis: PrivateRedis
) -> None:
    with _perfkit_on(private_redis):
        _cached_list(article)
        private_redis.stop()
        started = time.monotonic()
        for i in range(20):
            article.title = f"v{i + 1}"
            article.save()  # the bump fails: remembered
            rows = _cached_list(article)
            assert article.title in {a.title for a in rows}
        # Loose bound (a behaviour check, not a benchmark): 40 Redis-backed
        # operations that each waited for a timeout would take 2 s.
        assert time.monotonic() - started < 1.5
        get_gateway().close()


def test_after_an_outage_that_kept_the_data_no_entry_older_than_a_write_is_served(
    article: Article, private_redis: PrivateRedis
) -> None:
    # CLIENT PAUSE makes Redis stop answering while keeping every key: the
    # invalidation of the write below times out, and the old entry survives.
    with _perfkit_on(private_redis):
        assert "v0" in {a.title for a in _cached_list(article)}
        admin = redis.Redis.from_url(private_redis.url)
        admin.execute_command("CLIENT", "PAUSE", 600, "ALL")
        article.title = "written during the outage"
        article.save()
        assert "written during the outage" in {a.title for a in _cached_list(article)}
        time.sleep(0.7)  # Redis answers again, with the old entry in it
        assert admin.ping()
        with record_request() as record:
            rows = _cached_list(article)
        assert "written during the outage" in {a.title for a in rows}
        assert "v0" not in {a.title for a in rows}
        assert record.cache.misses == 1  # the epoch moved: a miss, not the old hit
        admin.close()
        get_gateway().close()


def test_every_process_that_saw_the_breaker_open_starts_a_new_epoch(
    article: Article, private_redis: PrivateRedis
) -> None:
    # A reader process never wrote during the outage, but another one may have:
    # once its breaker opened, it does not trust the old entries either.
    from django_perfkit.versions import tokens

    with _perfkit_on(private_redis):
        _cached_list(article)
        epoch_key = tokens.tokens_for("default").epoch
        admin = redis.Redis.from_url(private_redis.url)
        before = admin.get(epoch_key)
        admin.execute_command("CLIENT", "PAUSE", 400, "ALL")
        for _ in range(3):
            _cached_list(article)
        assert get_gateway().breaker.times_opened >= 1
        time.sleep(0.6)
        _cached_list(article)
        assert admin.get(epoch_key) != before
        admin.close()
        get_gateway().close()


def test_the_demo_pages_are_served_with_redis_stopped(
    client, article: Article, private_redis: PrivateRedis
) -> None:
    # Every page that reads through .cache(), cache on write and cached
    # fragments: served from the database, never a 500.
    with _perfkit_on(private_redis):
        pages = ["/", "/articles/", f"/articles/{article.slug}/", "/api/articles/"]
        assert [client.get(page).status_code for page in pages] == [200] * 4
        private_redis.stop()
        article.title = "written with Redis stopped"
        article.save()
        responses = [client.get(page) for page in pages]
        assert [r.status_code for r in responses] == [200] * 4
        assert "written with Redis stopped" in responses[2].content.decode()
        get_gateway().close()


def test_black_holed_redis_reads_are_served_within_the_timeout(article: Article) -> None:
    # A Redis that accepts connections and never answers: each call waits for
    # REDIS_TIMEOUT until the breaker opens, then none waits at all.
    hole = BlackHole()
    try:
        settings_ = {"REDIS_URL": hole.url, "KEY_PREFIX": KEY_PREFIX, "REDIS_TIMEOUT": 0.05}
        with override_settings(PERFKIT={**settings_, "BREAKER_COOLDOWN": 30}):
            started = time.monotonic()
            for i in range(20):
                article.title = f"v{i + 1}"
                article.save()
                assert article.title in {a.title for a in _cached_list(article)}
            elapsed = time.monotonic() - started
            # Three timeouts open the breaker; 40 calls that each waited would
            # take 2 s. Loose bound: a behaviour check, not a benchmark.
            assert elapsed < 1.5
            get_gateway().close()
    finally:
        hole.close()


def test_the_cache_works_on_redis_cluster(article: Article, cluster: PrivateCluster) -> None:
    cluster_settings = {"REDIS_URL": cluster.url, "REDIS_CLUSTER": True, "KEY_PREFIX": KEY_PREFIX}
    with override_settings(PERFKIT=cluster_settings):
        _cached_list(article)
        for _ in range(2):  # READ's script, then MGET (the tokens remembered)
            with record_request() as record:
                _cached_list(article)
            assert (record.cache.hits, record.db.count) == (1, 0)
        article.title = "on the cluster"
        article.save()
        assert "on the cluster" in {a.title for a in _cached_list(article)}
        for _ in range(3):
            assert Article.objects.cache().get(pk=article.pk).title == "on the cluster"
        get_gateway().close()


# -- eviction -------------------------------------------------------------------------------


def test_an_evicted_token_never_makes_an_old_entry_valid_again(article: Article) -> None:
    client = redis.Redis.from_url(settings.REDIS_URL)
    _cached_list(article)
    entry_keys = list(client.scan_iter(match=f"{KEY_PREFIX}:*:q:*"))
    assert len(entry_keys) == 1
    old_entry = client.get(entry_keys[0])
    # Evict every token, then write: the write re-creates its tokens.
    tokens = [k for k in client.scan_iter(match=f"{KEY_PREFIX}:*") if b":q:" not in k]
    client.delete(*tokens)
    Article.objects.filter(pk=article.pk).update(title="after eviction")
    # Even if the old entry comes back (it was never evicted), it does not match.
    client.set(entry_keys[0], old_entry)
    assert "after eviction" in {a.title for a in _cached_list(article)}
    # And with no write at all, a missing token means a miss, never a hit.
    _cached_list(article)
    client.delete(*list(client.scan_iter(match=f"{KEY_PREFIX}:*:f:*")))
    with record_request() as record:
        _cached_list(article)
    assert record.cache.misses == 1
    client.close()


# -- stampede --------------------------------------------------------------------------------


def test_single_flight_one_database_execution_for_many_simultaneous_misses(
    article: Article,
) -> None:
    threads = 20
    barrier = threading.Barrier(threads)
    executions: list[int] = []
    results: list[set[str]] = []

    def request() -> None:
        with record_request() as record:
            barrier.wait()
            rows = list(Article.objects.filter(category_id=article.category_id).cache())
        executions.append(record.db.count)
        results.append({a.title for a in rows})
        connections.close_all()

    workers = [threading.Thread(target=request) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(results) == threads and all(r == results[0] for r in results)
    assert sum(executions) <= 2, executions


def test_a_miss_that_loses_the_race_to_store_uses_the_stored_entry(article: Article) -> None:
    # Single flight's last gap: our READ missed, then another miss computed,
    # stored and released its lock before our CAPTURE. We must not compute again.
    queryset = Article.objects.filter(category_id=article.category_id).cache()
    lookup = queryset._perfkit_lookup("rows")
    assert lookup is not None
    steps = entries._protocol(lookup)
    assert steps.send(None)[:2] == ("script", entries.READ)
    assert steps.send(None) == ("plan",)  # pretend the READ missed
    capture = steps.send(lookup.make_plan())
    assert capture[:2] == ("script", entries.CAPTURE)
    stored = _cached_list(article)  # the other miss
    reply = get_gateway().run_script(capture[1], capture[2], capture[3], None)
    with pytest.raises(StopIteration) as done:
        steps.send(reply)  # no ("compute",) step: the stored entry is used
    assert [a.pk for a in done.value.value] == [a.pk for a in stored]


def test_waiters_give_up_after_lock_wait_and_query_themselves(article: Article) -> None:
    queryset = Article.objects.filter(category_id=article.category_id).cache()
    lookup = queryset._perfkit_lookup("rows")
    assert lookup is not None
    # Someone took the lock and died.
    get_gateway().run(lambda c: c.set(lookup.lock, "dead", px=60_000), None)
    with override_settings(PERFKIT={"KEY_PREFIX": KEY_PREFIX, "CACHE": {"LOCK_WAIT": 0.1}}):
        started = time.monotonic()
        rows = list(Article.objects.filter(category_id=article.category_id).cache())
        waited = time.monotonic() - started
    assert {a.pk for a in rows} >= {article.pk}
    assert waited >= 0.1


def test_waiters_stop_waiting_when_the_lock_is_released_without_an_entry(
    article: Article,
) -> None:
    # The first miss's result was refused (a write raced it): its lock goes, no
    # entry comes. The others must not sit out LOCK_WAIT for nothing.
    lookup = Article.objects.filter(category_id=article.category_id).cache()._perfkit_lookup("rows")
    assert lookup is not None
    gateway = get_gateway()
    gateway.run(lambda c: c.set(lookup.lock, "first", px=60_000), None)
    release = threading.Timer(0.1, lambda: gateway.run(lambda c: c.delete(lookup.lock), None))
    release.start()
    with override_settings(PERFKIT={"KEY_PREFIX": KEY_PREFIX, "CACHE": {"LOCK_WAIT": 5.0}}):
        started = time.monotonic()
        rows = _cached_list(article)
        waited = time.monotonic() - started
    release.join()
    assert article.pk in {a.pk for a in rows}
    assert 0.1 <= waited < 2.0


# -- early refresh (XFetch) -------------------------------------------------------------------


def test_xfetch_refreshes_near_expiry_and_never_far_from_it() -> None:
    now_ms = int(time.time() * 1000)
    from django_perfkit.cache import codec

    payload = codec.dumps([1])
    near = b"%d %d\n" % (now_ms + 50, 100_000) + payload  # 50 ms left, 100 ms to compute
    far = b"%d %d\n" % (now_ms + 3_600_000, 100_000) + payload
    near_refreshes = sum(entries.decode(near, 1.0)[1] for _ in range(200))
    assert 100 < near_refreshes <= 200  # exp(-0.5) = 61% expected
    assert not any(entries.decode(far, 1.0)[1] for _ in range(200))
    assert not any(entries.decode(near, 0.0)[1] for _ in range(200))
    assert entries.decode(near, 1.0)[0] == [1]


def test_an_early_refresh_is_done_by_one_caller_and_the_others_get_the_entry(
    article: Article,
) -> None:
    huge_beta = {"KEY_PREFIX": KEY_PREFIX, "CACHE": {"EARLY_REFRESH_BETA": 1e9}}
    with override_settings(PERFKIT=huge_beta):
        _cached_list(article)
        with record_request() as record:
            _cached_list(article)  # always "near expiry" with this beta: refreshes
        assert record.db.count == 1
        lookup = (
            Article.objects.filter(category_id=article.category_id).cache()._perfkit_lookup("rows")
        )
        assert lookup is not None
        get_gateway().run(lambda c: c.set(lookup.lock, "someone", px=60_000), None)
        with record_request() as record:
            _cached_list(article)  # someone else is refreshing: served from the cache
        assert (record.db.count, record.cache.hits) == (0, 1)


# -- async ------------------------------------------------------------------------------------


async def test_async_forms_hit_the_cache_natively(article: Article) -> None:
    pk, category_id = article.pk, article.category_id

    async def evaluate() -> tuple[object, ...]:
        qs = Article.objects.cache()
        got = await qs.aget(pk=pk)
        first = await qs.filter(category_id=category_id).order_by("pk").afirst()
        last = await qs.filter(category_id=category_id).order_by("pk").alast()
        count = await qs.filter(category_id=category_id).acount()
        exists = await qs.filter(category_id=category_id).aexists()
        agg = await qs.filter(category_id=category_id).aaggregate(n=Count("pk"))
        rows = [a.pk async for a in qs.filter(category_id=category_id).order_by("pk")]
        return got.title, first.pk, last.pk, count, exists, agg, rows

    expected = await evaluate()
    with record_request() as record:
        again = await evaluate()
    assert again == expected
    assert record.db.count == 0
    assert record.cache.hits == 7
    # The lookups ran on this loop's redis.asyncio client, not in a thread.
    import asyncio

    assert asyncio.get_running_loop() in get_gateway()._async_clients


async def test_async_get_raises_like_get(article: Article) -> None:
    with pytest.raises(Article.DoesNotExist):
        await Article.objects.cache().aget(pk=article.pk + 10_000)
    with pytest.raises(Article.MultipleObjectsReturned):
        await Article.objects.cache().filter(category_id=article.category_id).aget()


async def test_async_writes_invalidate(article: Article) -> None:
    from asgiref.sync import sync_to_async

    pk = article.pk
    assert (await Article.objects.cache().aget(pk=pk)).title == "v0"
    await Article.objects.filter(pk=pk).aupdate(title="async write")
    assert (await Article.objects.cache().aget(pk=pk)).title == "async write"
    fetched = await Article.objects.aget(pk=pk)
    fetched.title = "async save"
    await sync_to_async(fetched.save)()
    assert (await Article.objects.cache().aget(pk=pk)).title == "async save"


# -- several databases --------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_aliases_have_their_own_entries_and_tokens() -> None:
    def make(using: str) -> Category:
        return Category.objects.using(using).create(name=using, slug=using)

    make("default")
    make("other")
    assert [c.name for c in Category.objects.using("other").cache()] == ["other"]
    assert [c.name for c in Category.objects.cache()] == ["default"]
    Category.objects.using("other").update(name="other changed")
    assert [c.name for c in Category.objects.using("other").cache()] == ["other changed"]
    with record_request() as record:
        assert [c.name for c in Category.objects.cache()] == ["default"]
    assert record.cache.hits == 1  # a write to "other" left "default" alone


async def test_an_async_read_makes_a_missed_bump_good_without_blocking(article: Article) -> None:
    import asyncio

    from django_perfkit.versions import tokens

    epoch = tokens.tokens_for("default").epoch
    gateway = get_gateway()
    before = gateway.run(lambda c: c.get(epoch), None)
    tokens.mark_missed("default")
    with record_request() as record:
        got = await Article.objects.cache().aget(pk=article.pk)
    assert got.pk == article.pk and record.cache.misses == 1
    assert tokens._missed == {}
    assert gateway.run(lambda c: c.get(epoch), None) != before
    assert asyncio.get_running_loop() in gateway._async_clients
