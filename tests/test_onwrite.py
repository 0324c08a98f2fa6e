"""``@cached_on_write``: reads never compute, every write path refreshes or invalidates."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, connections, transaction
from django.db.models import F, signals
from django.test import override_settings
from model_bakery import baker

from django_perfkit.cache import cached_on_write, flush_deferred
from django_perfkit.cache.onwrite import deferred, registry
from django_perfkit.record import record_request
from django_perfkit.redis import get_gateway
from django_perfkit.reporters.server_timing import build_header
from testproject.news.models import Article, Author, Category, Comment, Tag
from testproject.news.stats import comment_count, most_discussed
from tests.redis_servers import PrivateRedis
from tests.settings import KEY_PREFIX

pytestmark = pytest.mark.django_db(transaction=True)

computed: list[tuple[str, Any]] = []


@cached_on_write(
    depends_on={
        Comment: lambda comment: {"article_id": comment.article_id},
        Article: lambda article: {"article_id": article.pk},
    }
)
def article_stats(article_id: int) -> dict[str, Any]:
    computed.append(("article_stats", article_id))
    comments = Comment.objects.filter(article_id=article_id)
    title = Article.objects.filter(pk=article_id).values_list("title", flat=True).first()
    return {
        "count": comments.count(),
        "latest": list(comments.order_by("-pk").values_list("author_name", flat=True)[:3]),
        "title": title,
    }


@cached_on_write(
    depends_on={
        Article: lambda article: {"article_id": article.pk},
        Tag: lambda tag: [{"article_id": pk} for pk in tag.articles.values_list("pk", flat=True)],
    }
)
def tag_names(article_id: int) -> list[str]:
    computed.append(("tag_names", article_id))
    return sorted(Tag.objects.filter(articles__pk=article_id).values_list("name", flat=True))


@cached_on_write(depends_on={"news.Comment": lambda comment: {"article_id": comment.article_id}})
def fragile(article_id: int) -> int:
    if Comment.objects.filter(article_id=article_id, author_name="boom").exists():
        raise RuntimeError("boom")
    return Comment.objects.filter(article_id=article_id).count()


@cached_on_write(
    depends_on={Comment: lambda comment: {"article_id": comment.article_id}}, defer=True
)
def deferred_count(article_id: int) -> int:
    computed.append(("deferred_count", article_id))
    return Comment.objects.filter(article_id=article_id).count()


@pytest.fixture(autouse=True)
def _fresh() -> Any:
    computed.clear()
    yield
    assert flush_deferred(timeout=10)


@pytest.fixture
def local() -> Any:
    """Decorate a function for one test only (unregistered afterwards)."""
    made: list[Any] = []

    def decorate(depends_on: Any, **kwargs: Any) -> Any:
        def register(func: Any) -> Any:
            function = cached_on_write(depends_on, **kwargs)(func)
            made.append(function)
            return function

        return register

    yield decorate
    for function in made:
        registry.remove(function)


@pytest.fixture
def articles() -> list[Article]:
    category = baker.make(Category)
    author = baker.make(Author)
    return baker.make(Article, category=category, author=author, _quantity=3)


def comment(article: Article, name: str = "ann", **extra: Any) -> Comment:
    return Comment.objects.create(article=article, author_name=name, body="hi", **extra)


def truth(article_id: int) -> dict[str, Any]:
    return article_stats.func(article_id=article_id)  # type: ignore[call-arg]


def read_without_sql(article_id: int) -> dict[str, Any]:
    """Read the value; assert (with perfkit's own query collector) that it ran no SQL."""
    with record_request() as record:
        value = article_stats(article_id=article_id)
    assert record.db.count == 0, [q.sql for q in record.db.queries]
    assert record.cache.hits == 1
    return value


# -- the read path ----------------------------------------------------------------------


def test_after_warm_up_the_read_path_runs_no_sql(articles: list[Article]) -> None:
    comment(articles[0])
    first = article_stats(article_id=articles[0].pk)
    assert first == truth(articles[0].pk)
    computed.clear()
    for _ in range(3):
        assert read_without_sql(articles[0].pk) == first
    assert computed == []


def test_a_write_recomputes_only_entries_that_are_stored(articles: list[Article]) -> None:
    # Nobody read the new articles' values: saving them computed nothing.
    assert computed == []
    article_stats(article_id=articles[0].pk)
    computed.clear()
    comment(articles[0])
    comment(articles[1])
    assert computed == [("article_stats", articles[0].pk)]
    assert article_stats.peek(article_id=articles[1].pk) is None


def test_a_miss_computes_once_and_stores(articles: list[Article]) -> None:
    for article in articles:
        article_stats.invalidate(article_id=article.pk)
    with record_request() as record:
        value = article_stats(article_id=articles[1].pk)
    assert value == {"count": 0, "latest": [], "title": articles[1].title}
    assert record.cache.misses == 1
    assert article_stats.peek(article_id=articles[1].pk) == value
    assert article_stats.peek(article_id=articles[2].pk) is None  # peek never computes


def test_positional_and_string_arguments_name_the_same_entry(articles: list[Article]) -> None:
    article_stats(articles[0].pk)
    computed.clear()
    assert article_stats(str(articles[0].pk)) == article_stats(article_id=articles[0].pk)
    assert computed == []


# -- signalled writes refresh ----------------------------------------------------------


def test_a_new_comment_recomputes_at_commit_so_the_next_read_hits(
    articles: list[Article],
) -> None:
    article_stats(article_id=articles[0].pk)
    article_stats(article_id=articles[1].pk)
    computed.clear()
    comment(articles[0], "bob")
    # Recomputed by the write, for the affected article only.
    assert computed == [("article_stats", articles[0].pk)]
    assert read_without_sql(articles[0].pk) == truth(articles[0].pk)
    assert read_without_sql(articles[0].pk)["latest"] == ["bob"]
    # The other article's entry was neither recomputed nor invalidated.
    assert read_without_sql(articles[1].pk) == truth(articles[1].pk)


def test_a_moved_comment_refreshes_the_old_and_the_new_article(articles: list[Article]) -> None:
    moving = comment(articles[0], "mover")
    for article in articles[:2]:
        article_stats(article_id=article.pk)
    stale_copy = Comment.objects.get(pk=moving.pk)
    stale_copy.article = articles[1]
    stale_copy.save()
    for article in articles[:2]:
        assert read_without_sql(article.pk) == truth(article.pk)
    assert read_without_sql(articles[1].pk)["latest"] == ["mover"]
    assert read_without_sql(articles[0].pk)["count"] == 0


def test_delete_and_queryset_delete_refresh(articles: list[Article]) -> None:
    first, second = comment(articles[0], "a"), comment(articles[0], "b")
    article_stats(article_id=articles[0].pk)
    first.delete()
    assert read_without_sql(articles[0].pk)["latest"] == ["b"]
    Comment.objects.filter(pk=second.pk).delete()  # signals are sent per object
    assert read_without_sql(articles[0].pk) == truth(articles[0].pk)
    assert truth(articles[0].pk)["count"] == 0


def test_a_write_to_the_other_dependency_model_refreshes(articles: list[Article]) -> None:
    article_stats(article_id=articles[0].pk)
    articles[0].title = "renamed"
    articles[0].save()
    assert read_without_sql(articles[0].pk)["title"] == "renamed"


def test_many_to_many_changes_refresh_both_directions(articles: list[Article]) -> None:
    red, blue = baker.make(Tag, name="red"), baker.make(Tag, name="blue")
    article = articles[0]
    assert tag_names(article_id=article.pk) == []
    article.tags.add(red)
    assert tag_names.peek(article_id=article.pk) == ["red"]
    blue.articles.add(article)  # reverse side: the mapping of Article runs on each pk
    assert tag_names.peek(article_id=article.pk) == ["blue", "red"]
    article.tags.remove(red)
    assert tag_names.peek(article_id=article.pk) == ["blue"]
    blue.articles.clear()  # post_clear has no pk_set: taken before the clear
    assert tag_names.peek(article_id=article.pk) == []
    article.tags.set([red, blue])
    assert tag_names.peek(article_id=article.pk) == ["blue", "red"]
    computed.clear()
    assert tag_names(article_id=article.pk) == ["blue", "red"]
    assert computed == []


# -- writes without signals invalidate ------------------------------------------------------


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(
            lambda a: Comment.objects.filter(article=a).update(author_name="edited"), id="update"
        ),
        pytest.param(
            lambda a: Comment.objects.bulk_create(
                [Comment(article=a, author_name="bulk", body="x")]
            ),
            id="bulk_create",
        ),
        pytest.param(
            lambda a: Comment.objects.bulk_update(
                [Comment(pk=Comment.objects.filter(article=a).first().pk, author_name="bu")],  # type: ignore[union-attr]
                ["author_name"],
            ),
            id="bulk_update",
        ),
        pytest.param(lambda a: _raw(f"DELETE FROM {Comment._meta.db_table}"), id="raw SQL"),
        pytest.param(
            lambda a: (
                Comment.objects.filter(pk__in=[]).update(author_name="none")
                + Article.objects.filter(pk=a.pk).update(title=F("title"))
            ),
            id="update by pk",
        ),
    ],
)
def test_writes_without_signals_invalidate_so_no_reader_sees_stale_data(
    articles: list[Article], write: Any
) -> None:
    comment(articles[0], "orig")
    article_stats(article_id=articles[0].pk)
    article_stats(article_id=articles[1].pk)
    write(articles[0])
    assert article_stats.peek(article_id=articles[0].pk) is None
    with record_request() as record:
        assert article_stats(article_id=articles[0].pk) == truth(articles[0].pk)
    assert record.cache.misses == 1


def _raw(sql: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(sql)
    return 0


def test_a_failed_save_does_not_let_a_later_unsignalled_write_through(
    articles: list[Article],
) -> None:
    comment(articles[0])
    article_stats(article_id=articles[0].pk)
    broken = Comment(article=articles[0], author_name="x", body="x")
    broken.created_at = "not a date"  # type: ignore[assignment]
    broken.id = "not a number"  # type: ignore[assignment]
    with pytest.raises((ValueError, TypeError)):
        broken.save()  # pre_save announced the write; it never happened
    Comment.objects.bulk_create([Comment(article=articles[0], author_name="bulk", body="x")])
    assert article_stats.peek(article_id=articles[0].pk) is None
    assert article_stats(article_id=articles[0].pk)["count"] == 2


def test_an_announcement_covers_only_its_own_rows(articles: list[Article]) -> None:
    other = comment(articles[1], "other")
    article_stats(article_id=articles[1].pk)

    def sneaky(sender: Any, instance: Comment, **kwargs: Any) -> None:
        # Runs while the save of another comment is announced.
        if instance.author_name == "trigger":
            Comment.objects.filter(pk=other.pk).update(author_name="sneaky")

    signals.pre_save.connect(sneaky, sender=Comment)
    try:
        comment(articles[0], "trigger")
    finally:
        signals.pre_save.disconnect(sneaky, sender=Comment)
    assert article_stats.peek(article_id=articles[1].pk) is None
    assert article_stats(article_id=articles[1].pk)["latest"] == ["sneaky"]


def test_an_insert_announcement_covers_one_insert_only(articles: list[Article]) -> None:
    article_stats(article_id=articles[1].pk)

    def bulk(sender: Any, instance: Comment, **kwargs: Any) -> None:
        if instance.author_name == "trigger":
            Comment.objects.bulk_create([Comment(article=articles[1], author_name="b", body="x")])

    signals.pre_save.connect(bulk, sender=Comment)
    try:
        comment(articles[0], "trigger")
    finally:
        signals.pre_save.disconnect(bulk, sender=Comment)
    assert article_stats.peek(article_id=articles[1].pk) is None
    assert article_stats(article_id=articles[1].pk)["count"] == 1


def test_saving_an_unsaved_instance_over_a_stored_row_leaves_nothing_stale(
    articles: list[Article],
) -> None:
    stored = comment(articles[0], "moved")
    for article in articles[:2]:
        article_stats(article_id=article.pk)
    # Built in memory (adding=True), with the pk of a stored row: an UPDATE.
    moved = Comment(pk=stored.pk, article=articles[1], author_name="moved", body="x")
    moved.created_at = stored.created_at
    moved.save()
    for article in articles[:2]:
        assert article_stats(article_id=article.pk) == truth(article.pk)
    assert truth(articles[0].pk)["count"] == 0


def test_deleting_an_instance_older_than_its_row_leaves_nothing_stale(
    articles: list[Article],
) -> None:
    stale = comment(articles[0], "old copy")
    fresh = Comment.objects.get(pk=stale.pk)
    fresh.article = articles[2]
    fresh.save()
    for article in articles:
        article_stats(article_id=article.pk)
    stale.delete()  # still says articles[0]; the row is on articles[2]
    for article in articles:
        assert article_stats(article_id=article.pk) == truth(article.pk)
    assert truth(articles[2].pk)["count"] == 0


def test_a_write_through_a_model_another_function_reads_is_not_announced_away(
    articles: list[Article], local: Any
) -> None:
    through = Article.tags.through
    red, green = baker.make(Tag, name="red"), baker.make(Tag, name="green")

    # Depends on the through table itself, which m2m_changed's receivers
    # (those of Article and Tag) do not refresh: its writes must invalidate it.
    @local(depends_on={through: lambda row: {"article_id": row.article_id}})
    def tag_rows(article_id: int) -> int:
        return int(through.objects.filter(article_id=article_id).count())

    assert tag_names(article_id=articles[0].pk) == []
    assert tag_rows(article_id=articles[0].pk) == 0
    articles[0].tags.add(red)
    assert tag_names.peek(article_id=articles[0].pk) == ["red"]  # refreshed
    assert tag_rows.peek(article_id=articles[0].pk) is None  # invalidated, not stale
    assert tag_rows(article_id=articles[0].pk) == 1
    # An auto-created through model sends no save signals: a plain invalidation.
    through.objects.create(article=articles[0], tag=green)
    assert tag_names.peek(article_id=articles[0].pk) is None
    assert tag_rows.peek(article_id=articles[0].pk) is None
    assert tag_names(article_id=articles[0].pk) == ["green", "red"]
    assert tag_rows(article_id=articles[0].pk) == 2


def test_refresh_inside_a_transaction_stores_only_after_the_commit(
    articles: list[Article],
) -> None:
    assert article_stats(article_id=articles[0].pk)["count"] == 0
    with pytest.raises(RuntimeError), transaction.atomic():
        Comment.objects.bulk_create([Comment(article=articles[0], author_name="u", body="x")])
        assert article_stats.refresh(article_id=articles[0].pk)["count"] == 1
        raise RuntimeError
    assert article_stats(article_id=articles[0].pk)["count"] == 0
    with transaction.atomic():
        Comment.objects.bulk_create([Comment(article=articles[0], author_name="c", body="x")])
        article_stats.refresh(article_id=articles[0].pk)
    assert read_without_sql(articles[0].pk)["count"] == 1


# -- transactions ------------------------------------------------------------------------------


def test_a_rollback_leaves_nothing_stale(articles: list[Article]) -> None:
    before = article_stats(article_id=articles[0].pk)
    computed.clear()
    with pytest.raises(RuntimeError), transaction.atomic():
        comment(articles[0], "rolled back")
        Comment.objects.filter(article=articles[0]).update(body="x")
        # Inside the transaction the value includes its own write, uncached.
        assert article_stats(article_id=articles[0].pk)["count"] == 1
        raise RuntimeError
    assert read_without_sql(articles[0].pk) == before
    assert computed == [("article_stats", articles[0].pk)]  # the uncached read only
    assert before == truth(articles[0].pk)


def test_a_savepoint_rollback_drops_only_its_refresh(articles: list[Article]) -> None:
    article_stats(article_id=articles[0].pk)
    article_stats(article_id=articles[1].pk)
    computed.clear()
    with transaction.atomic():
        comment(articles[0], "kept")
        try:
            with transaction.atomic():
                comment(articles[1], "dropped")
                raise RuntimeError
        except RuntimeError:
            pass
        assert computed == []  # nothing before the commit
    assert computed == [("article_stats", articles[0].pk)]
    assert read_without_sql(articles[0].pk)["latest"] == ["kept"]
    assert read_without_sql(articles[1].pk) == truth(articles[1].pk)


def test_many_writes_in_one_transaction_recompute_each_entry_once(
    articles: list[Article],
) -> None:
    for article in articles[:2]:
        article_stats(article_id=article.pk)
    computed.clear()
    with transaction.atomic():
        for i in range(20):
            comment(articles[i % 2], f"c{i}")
    assert sorted(computed) == sorted(("article_stats", a.pk) for a in articles[:2])
    assert read_without_sql(articles[0].pk)["count"] == 10


@pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"),
    reason="SQLite's shared in-memory database locks out concurrent writers",
)
def test_concurrent_writers_end_with_the_exact_value(articles: list[Article]) -> None:
    article_stats(article_id=articles[0].pk)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(15):
                comment(articles[0], f"w{n}-{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    expected = truth(articles[0].pk)
    assert expected["count"] == 60
    assert article_stats(article_id=articles[0].pk) == expected


# -- failures ---------------------------------------------------------------------------------


def test_a_recompute_that_raises_is_logged_the_entry_removed_and_the_write_kept(
    articles: list[Article], caplog: pytest.LogCaptureFixture
) -> None:
    comment(articles[0])
    assert fragile(article_id=articles[0].pk) == 1
    with caplog.at_level(logging.ERROR, logger="django_perfkit.cache"):
        comment(articles[0], "boom")  # the write succeeds
    assert Comment.objects.filter(author_name="boom").exists()
    assert "recomputing" in caplog.text and "fragile" in caplog.text
    assert fragile.peek(article_id=articles[0].pk) is None
    raw = get_gateway().run(lambda c: c.keys(f"{KEY_PREFIX}*o:*fragile*"), None)
    assert raw == []  # deleted, not only outdated
    with pytest.raises(RuntimeError):
        fragile(article_id=articles[0].pk)


def test_a_mapping_that_returns_wrong_keys_invalidates_every_entry_and_says_which(
    articles: list[Article], caplog: pytest.LogCaptureFixture, local: Any
) -> None:
    @local(depends_on={Comment: lambda c: {"article": c.article_id}})
    def badly_mapped(article_id: int) -> int:
        return Comment.objects.filter(article_id=article_id).count()

    assert badly_mapped(article_id=articles[0].pk) == 0
    assert badly_mapped(article_id=articles[1].pk) == 0
    with caplog.at_level(logging.ERROR, logger="django_perfkit.cache"):
        comment(articles[0])
    assert "badly_mapped" in caplog.text and "article_id" in caplog.text
    assert badly_mapped.peek(article_id=articles[0].pk) is None
    assert badly_mapped.peek(article_id=articles[1].pk) is None
    assert badly_mapped(article_id=articles[0].pk) == 1


def test_with_redis_stopped_reads_compute_and_writes_succeed(articles: list[Article]) -> None:
    server = PrivateRedis()
    server.start()
    try:
        perfkit = {
            "REDIS_URL": server.url,
            "KEY_PREFIX": KEY_PREFIX,
            "REDIS_TIMEOUT": 0.05,
            "BREAKER_FAILURES": 2,
            "BREAKER_COOLDOWN": 0.2,
        }
        with override_settings(PERFKIT=perfkit):
            article_stats(article_id=articles[0].pk)
            server.stop()
            started = time.monotonic()
            for i in range(10):
                comment(articles[0], f"down{i}")
                assert article_stats(article_id=articles[0].pk)["count"] == i + 1
            assert time.monotonic() - started < 2.0  # loose: no call waits for long
            get_gateway().close()
    finally:
        server.stop()


# -- the other API ---------------------------------------------------------------------------


def test_refresh_invalidate_and_invalidate_all(articles: list[Article]) -> None:
    Comment.objects.bulk_create([Comment(article=articles[0], author_name="q", body="x")])
    assert article_stats.refresh(article_id=articles[0].pk)["count"] == 1
    assert read_without_sql(articles[0].pk)["count"] == 1
    assert article_stats.invalidate(article_id=articles[0].pk)
    assert article_stats.peek(article_id=articles[0].pk) is None
    article_stats(article_id=articles[0].pk)
    article_stats(article_id=articles[1].pk)
    assert article_stats.invalidate_all()
    assert article_stats.peek(article_id=articles[0].pk) is None
    assert article_stats.peek(article_id=articles[1].pk) is None


def test_get_many_reads_every_hit_in_one_round_trip(articles: list[Article]) -> None:
    comment(articles[1])
    article_stats(article_id=articles[0].pk)
    article_stats(article_id=articles[1].pk)
    calls = [{"article_id": a.pk} for a in articles]
    with record_request() as record:
        values = article_stats.get_many(calls)
    assert values == [truth(a.pk) for a in articles]
    assert record.cache.hits == 2 and record.cache.misses == 1
    assert record.db.count == 3  # only the miss computed (count, latest, title)


def test_async_reads(articles: list[Article]) -> None:
    comment(articles[0])

    async def run() -> tuple[Any, Any, Any, Any]:
        first = await article_stats.aget(article_id=articles[0].pk)
        second = await article_stats.aget(article_id=articles[0].pk)
        peeked = await article_stats.apeek(article_id=articles[0].pk)
        many = await article_stats.aget_many([{"article_id": articles[0].pk}])
        await article_stats.ainvalidate(article_id=articles[0].pk)
        return first, second, peeked, many

    first, second, peeked, many = async_to_sync(run)()
    assert first == second == peeked == many[0] == truth(articles[0].pk)
    assert article_stats.peek(article_id=articles[0].pk) is None


def test_hits_and_recomputes_go_into_the_request_record(articles: list[Article]) -> None:
    article_stats(article_id=articles[0].pk)
    with record_request() as record:
        comment(articles[0])
        article_stats(article_id=articles[0].pk)
    assert record.cache.hits == 1
    assert record.cache.recomputes == 1
    assert 'desc="1 hit, 0 misses, 1 recompute"' in build_header(record)


def test_a_table_read_but_not_declared_is_learned_and_its_writes_invalidate(
    articles: list[Article], caplog: pytest.LogCaptureFixture, local: Any
) -> None:
    @local(depends_on={Comment: lambda c: {"article_id": c.article_id}})
    def with_author(article_id: int) -> str:
        return str(Author.objects.get(articles__pk=article_id).name)

    with caplog.at_level(logging.WARNING, logger="django_perfkit.cache"):
        with_author(article_id=articles[0].pk)  # learns news_author (and news_article)
    assert "news_author" in caplog.text
    with_author(article_id=articles[0].pk)
    assert with_author.peek(article_id=articles[0].pk) is not None
    Author.objects.filter(pk=articles[0].author_id).update(name="renamed")
    assert with_author.peek(article_id=articles[0].pk) is None
    assert with_author(article_id=articles[0].pk) == "renamed"


# -- defer=True ---------------------------------------------------------------------------------


def test_deferred_recomputes_coalesce_and_end_exact(articles: list[Article]) -> None:
    for article in articles:
        deferred_count(article_id=article.pk)
    recomputes_before = deferred_count.recomputes
    with override_settings(PERFKIT={"KEY_PREFIX": KEY_PREFIX, "CACHE": {"DEFER_DELAY": 0.5}}):
        for i in range(60):
            comment(articles[i % 3], f"d{i}")
        assert flush_deferred(timeout=10)
    recomputes = deferred_count.recomputes - recomputes_before
    assert 3 <= recomputes < 20, recomputes
    for article in articles:
        expected = Comment.objects.filter(article=article).count()
        assert expected == 20
        assert deferred_count.peek(article_id=article.pk) == expected


def test_deferred_recomputes_are_queued_once_the_response_is_built(
    articles: list[Article],
) -> None:
    deferred_count(article_id=articles[0].pk)
    queued = deferred.worker.queued
    with record_request() as record:
        comment(articles[0])
        assert deferred.worker.queued == queued  # not while the request runs
        assert record.after_response
    assert deferred.worker.queued == queued + 1
    assert flush_deferred(timeout=10)
    assert deferred_count.peek(article_id=articles[0].pk) == 1


def test_deferred_keys_are_invalidated_at_commit_so_no_reader_sees_stale_data(
    articles: list[Article],
) -> None:
    with override_settings(PERFKIT={"KEY_PREFIX": KEY_PREFIX, "CACHE": {"DEFER_DELAY": 30}}):
        assert deferred_count(article_id=articles[0].pk) == 0
        comment(articles[0])
        assert deferred_count.peek(article_id=articles[0].pk) is None
        assert deferred_count(article_id=articles[0].pk) == 1
        assert flush_deferred(timeout=10)


def test_a_full_queue_invalidates_instead(articles: list[Article]) -> None:
    dropped = deferred.worker.dropped
    cache = {"DEFER_DELAY": 30, "DEFER_MAX_PENDING": 1}
    with override_settings(PERFKIT={"KEY_PREFIX": KEY_PREFIX, "CACHE": cache}):
        for article in articles:
            deferred_count(article_id=article.pk)
        for article in articles:
            comment(article)
        assert deferred.worker.dropped >= dropped + 2
        for article in articles:
            assert deferred_count(article_id=article.pk) == 1
        assert flush_deferred(timeout=10)


# -- the demo site ----------------------------------------------------------------------


def test_demo_comment_counts_and_most_discussed_are_kept_by_writes(
    articles: list[Article],
) -> None:
    most_discussed()  # the first reads compute; from then on, the writes do
    comment_count.get_many([{"article_id": a.pk} for a in articles])
    comment(articles[1])
    comment(articles[1])
    comment(articles[2])
    assert flush_deferred(timeout=10)
    with record_request() as record:
        top = most_discussed()
        counts = comment_count.get_many([{"article_id": a.pk} for a in articles])
    assert record.db.count == 0
    assert [row["comments"] for row in top] == [2, 1]
    assert counts == [0, 2, 1]


# -- bad input ---------------------------------------------------------------------------


def _decorate(depends_on: Any, **kwargs: Any) -> Any:
    def function_under_test(article_id: int) -> int:
        return 0

    return cached_on_write(depends_on, **kwargs)(function_under_test)


@pytest.mark.parametrize(
    ("depends_on", "kwargs", "message"),
    [
        ({Category.objects: lambda c: {}}, {}, "is not a model"),
        ({"news": lambda c: {}}, {}, '"app_label.ModelName"'),
        ({"news.Nope": lambda c: {}}, {}, "not an installed model"),
        ({Comment: "article_id"}, {}, "not callable"),
        ({}, {}, "non-empty dict"),
        ({Comment: lambda c: {}}, {"timeout": -1}, "timeout"),
    ],
)
def test_bad_decorations_fail_at_decoration_time_naming_the_function(
    depends_on: Any, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ImproperlyConfigured, match=message) as info:
        _decorate(depends_on, **kwargs)
    assert "function_under_test" in str(info.value)


def test_bad_signatures_fail_at_decoration_time() -> None:
    deps = {Comment: lambda c: {"article_id": c.article_id}}
    with pytest.raises(ImproperlyConfigured, match="has a default"):

        @cached_on_write(deps)
        def with_default(article_id: int = 1) -> int:
            return 0

    with pytest.raises(ImproperlyConfigured, match="only named parameters"):

        @cached_on_write(deps)
        def star(*ids: int) -> int:
            return 0

    with pytest.raises(ImproperlyConfigured, match="async"):

        @cached_on_write(deps)
        async def coroutine(article_id: int) -> int:
            return 0


def test_two_functions_with_one_name_are_refused(local: Any) -> None:
    def make() -> Any:
        def twin(article_id: int) -> int:
            return 0

        return twin

    first = make()
    local({Comment: lambda c: {"article_id": c.article_id}})(first)
    local({Comment: lambda c: {"article_id": c.article_id}})(first)  # redecorated: replaces
    second = make()
    second.__code__ = second.__code__.replace(co_firstlineno=1)
    with pytest.raises(ImproperlyConfigured, match="named tests.test_onwrite"):
        local({Comment: lambda c: {"article_id": c.article_id}})(second)


def test_arguments_that_cannot_form_a_key_fail_at_the_call_naming_the_function(
    articles: list[Article],
) -> None:
    with pytest.raises(TypeError, match=r"article_stats\(\).*Article.*primary key"):
        article_stats(article_id=articles[0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"article_stats\(\).*missing"):
        article_stats()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"article_stats\(\).*unexpected"):
        article_stats(article_id=1, extra=2)  # type: ignore[call-arg]


# -- values that read other cached entries --------------------------------------------------


def tag_total() -> int:
    return len(list(Tag.objects.all().cache()))


@cached_on_write(depends_on={Comment: lambda comment: {"article_id": comment.article_id}})
def tags_seen_by(article_id: int) -> int:
    """Reads a .cache() entry of a table it does not declare."""
    return tag_total()


@pytest.fixture
def fresh_process() -> Any:
    """``tags_seen_by`` as a process that has not yet seen it read other entries."""
    tags_seen_by.reads_entries = False
    yield tags_seen_by
    tags_seen_by.reads_entries = False


def count_mgets(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from django_perfkit.cache.onwrite import function

    calls: list[int] = []
    real = function._mget

    def counted(keys: list[str]) -> Any:
        calls.append(len(keys))
        return real(keys)

    monkeypatch.setattr(function, "_mget", counted)
    return calls


def test_a_value_that_read_a_cached_entry_depends_on_it(
    articles: list[Article], fresh_process: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pk = articles[0].pk
    tag_total()
    assert tags_seen_by(article_id=pk) == 0
    baker.make(Tag)
    assert tag_total() == 1
    assert tags_seen_by(article_id=pk) == 1
    # Its entries carry the inner entry's tokens: a hit is one READ, not an
    # MGET that cannot check them followed by a READ.
    assert tags_seen_by.reads_entries
    mgets = count_mgets(monkeypatch)
    with record_request() as record:
        assert tags_seen_by(article_id=pk) == 1
    assert (record.cache.hits, record.cache.misses) == (1, 0)
    assert mgets == []


def test_another_process_learns_from_the_stored_entry_to_read_it_with_read(
    articles: list[Article], fresh_process: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pk = articles[0].pk
    tag_total()
    assert tags_seen_by(article_id=pk) == 0  # stored with the inner tokens
    tags_seen_by.reads_entries = False  # another process: it has not computed it
    mgets = count_mgets(monkeypatch)
    assert tags_seen_by(article_id=pk) == 0  # MGET: a header it cannot check; then READ
    assert tags_seen_by(article_id=pk) == 0  # READ only
    assert len(mgets) == 1
    assert tags_seen_by.reads_entries
    baker.make(Tag)
    assert tags_seen_by(article_id=pk) == 1


def test_a_batch_computed_by_get_many_depends_on_the_entries_it_read(
    articles: list[Article], fresh_process: Any
) -> None:
    pk = articles[0].pk
    tag_total()
    calls = [{"article_id": pk}]
    batches: list[int] = []

    def compute_many(missing: list[dict[str, Any]]) -> list[int]:
        batches.append(len(missing))
        return [tag_total() for _ in missing]

    assert tags_seen_by.get_many(calls, compute_many=compute_many) == [0]
    assert tags_seen_by.reads_entries
    assert tags_seen_by.get_many(calls, compute_many=compute_many) == [0]  # a hit, by READ
    assert batches == [1]
    baker.make(Tag)
    assert tag_total() == 1
    assert tags_seen_by(article_id=pk) == 1
    assert tags_seen_by.get_many(calls, compute_many=compute_many) == [1]
    assert batches == [1]  # recomputed by the read above, stored, then a hit
