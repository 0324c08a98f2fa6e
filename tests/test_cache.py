"""Queryset ``.cache()``: what is cached, what every write path invalidates, transactions."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.db.models import Count, F, Max, Prefetch, Value
from django.db.models.functions import Concat, Now, Substr
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from model_bakery import baker

from django_perfkit.cache import (
    CachedQuerySet,
    CachedQuerySetMixin,
    ainvalidate_all,
    entries,
    invalidate,
    invalidate_all,
)
from django_perfkit.record import record_request
from django_perfkit.redis import get_gateway
from django_perfkit.reporters.server_timing import build_header
from testproject.news.models import Article, Author, Category, Comment, Tag
from tests.settings import KEY_PREFIX

pytestmark = pytest.mark.django_db(transaction=True)


@contextmanager
def queries(using: str = "default") -> Iterator[CaptureQueriesContext]:
    with CaptureQueriesContext(connections[using]) as ctx:
        yield ctx


@pytest.fixture
def world() -> dict[str, object]:
    news, sport = baker.make(Category, _quantity=2)
    author = baker.make(Author)
    tags = baker.make(Tag, _quantity=2)
    articles = baker.make(Article, category=news, author=author, _quantity=3)
    others = baker.make(Article, category=sport, author=author, _quantity=2)
    articles[0].tags.set(tags)
    return {"news": news, "sport": sport, "author": author, "articles": articles, "others": others}


def news_list(world: dict[str, object]) -> list[Article]:
    return list(Article.objects.filter(category=world["news"]).select_related("author").cache())


# -- what is cached -------------------------------------------------------------------


def test_second_evaluation_runs_no_query_and_returns_equal_rows(world: dict) -> None:
    first = news_list(world)
    with queries() as q, record_request() as record:
        second = news_list(world)
    assert len(q) == 0
    assert [a.pk for a in second] == [a.pk for a in first]
    assert [a.author.name for a in second] == [a.author.name for a in first]
    assert (record.cache.hits, record.cache.misses) == (1, 0)


@pytest.mark.parametrize(
    "evaluate",
    [
        pytest.param(lambda qs, w: qs.get(pk=w["articles"][1].pk).title, id="get"),
        pytest.param(lambda qs, w: qs.order_by("pk").first().pk, id="first"),
        pytest.param(lambda qs, w: qs.order_by("pk").last().pk, id="last"),
        pytest.param(lambda qs, w: qs.count(), id="count"),
        pytest.param(lambda qs, w: qs.filter(category=w["news"]).exists(), id="exists"),
        pytest.param(lambda qs, w: qs.aggregate(top=Max("published_at"), n=Count("pk")), id="agg"),
        pytest.param(lambda qs, w: list(qs.values("pk", "title").order_by("pk")), id="values"),
        pytest.param(lambda qs, w: list(qs.values_list("pk", flat=True)), id="values_list"),
        pytest.param(lambda qs, w: sorted(qs.in_bulk()), id="in_bulk"),
        pytest.param(lambda qs, w: [a.pk for a in qs.order_by("pk")[1:3]], id="slice"),
        pytest.param(lambda qs, w: len(qs), id="len"),
    ],
)
def test_every_evaluation_is_served_from_the_cache(world: dict, evaluate) -> None:
    queryset = Article.objects.cache()
    expected = evaluate(queryset, world)
    with queries() as q:
        again = evaluate(Article.objects.cache(), world)
    assert again == expected
    assert len(q) == 0, [x["sql"] for x in q.captured_queries]


def test_prefetch_queries_are_cached_too(world: dict) -> None:
    def evaluate() -> list[tuple[int, list[str]]]:
        qs = Article.objects.order_by("pk").prefetch_related("tags").cache()
        return [(a.pk, [t.name for t in a.tags.all()]) for a in qs]

    expected = evaluate()
    with queries() as q:
        assert evaluate() == expected
    assert len(q) == 0
    # The prefetched table is a dependency: changing a tag invalidates.
    tag = world["articles"][0].tags.first()
    tag.name = "renamed"
    tag.save()
    assert "renamed" in str(evaluate())


def test_prefetch_with_a_queryset_is_cached_and_invalidated(world: dict) -> None:
    def evaluate() -> dict[int, list[int]]:
        per_category = Article.objects.order_by("pk")
        qs = Category.objects.prefetch_related(
            Prefetch("articles", queryset=per_category, to_attr="latest")
        ).cache()
        return {c.pk: [a.pk for a in c.latest] for c in qs}

    expected = evaluate()
    with queries() as q:
        assert evaluate() == expected
    assert len(q) == 0
    new = baker.make(Article, category=world["news"], author=world["author"])
    assert new.pk in evaluate()[world["news"].pk]


def test_nocache_and_uncached_querysets_always_query(world: dict) -> None:
    news_list(world)
    with queries() as q:
        list(Article.objects.filter(category=world["news"]).select_related("author").nocache())
        list(Article.objects.filter(category=world["news"]).select_related("author"))
        list(Article.objects.filter(category=world["news"]).cache().iterator())
    assert len(q) == 3


def test_models_setting_opts_a_model_in_and_nocache_opts_out(world: dict) -> None:
    with override_settings(
        PERFKIT={"KEY_PREFIX": KEY_PREFIX, "CACHE": {"MODELS": {"news.Category": 60}}}
    ):
        list(Category.objects.all())
        with queries() as q:
            list(Category.objects.all())
        assert len(q) == 0
        with queries() as q:
            list(Category.objects.nocache())
            list(Article.objects.all())  # not listed: uncached
        assert len(q) == 2


def test_disabled_cache_runs_every_query(world: dict) -> None:
    with override_settings(PERFKIT={"KEY_PREFIX": KEY_PREFIX, "CACHE": {"ENABLED": False}}):
        news_list(world)
        with queries() as q:
            news_list(world)
        assert len(q) == 1


def test_perfkit_switched_off_runs_every_query(world: dict) -> None:
    # PERFKIT["ENABLED"] = False turns caching off too, not only the middleware.
    with override_settings(PERFKIT={"KEY_PREFIX": KEY_PREFIX, "ENABLED": False}):
        news_list(world)
        with queries() as q:
            news_list(world)
        assert len(q) == 1


def test_empty_result_sets_are_not_cached_and_return_empty() -> None:
    with queries() as q:
        assert list(Article.objects.filter(pk__in=[]).cache()) == []
    assert len(q) == 0  # Django knows without asking the database


def test_get_does_not_exist_is_cached_until_the_row_appears(world: dict) -> None:
    missing = max(a.pk for a in Article.objects.all()) + 100
    with pytest.raises(Article.DoesNotExist):
        Article.objects.cache().get(pk=missing)
    with queries() as q, pytest.raises(Article.DoesNotExist):
        Article.objects.cache().get(pk=missing)
    assert len(q) == 0
    with pytest.raises(Article.DoesNotExist):
        Article.objects.cache(key="by-pk").get(pk=missing)
    with queries() as q, pytest.raises(Article.DoesNotExist):
        Article.objects.cache(key="by-pk").get(pk=missing)
    assert len(q) == 0
    baker.make(Article, pk=missing, category=world["news"], author=world["author"])
    assert Article.objects.cache().get(pk=missing).pk == missing
    assert Article.objects.cache(key="by-pk").get(pk=missing).pk == missing
    # More than one row: get()'s own error, from the cache too.
    for _ in range(2):
        with pytest.raises(Article.MultipleObjectsReturned, match="it returned 4"):
            Article.objects.cache().get(category=world["news"])
    # An insert with an id chosen by the database is caught by the scan token.
    baker.make(Article, category=world["news"], author=world["author"])
    nxt = max(a.pk for a in Article.objects.all())
    assert Article.objects.cache().get(pk=nxt).pk == nxt


def test_server_timing_reports_cache_hits_and_misses(world: dict) -> None:
    with record_request() as record:
        news_list(world)
        news_list(world)
    header = build_header(record)
    assert "cache;dur=" in header
    assert 'desc="1 hit, 1 miss"' in header


# -- invalidation: every write path ----------------------------------------------------


def _titles(world: dict) -> set[str]:
    return {a.title for a in news_list(world)}


WRITES = {
    "save": lambda w: (setattr(w["articles"][0], "title", "changed"), w["articles"][0].save()),
    "save_update_fields": lambda w: (
        setattr(w["articles"][0], "title", "changed"),
        w["articles"][0].save(update_fields=["title"]),
    ),
    "delete": lambda w: w["articles"][0].delete(),
    "qs_update": lambda w: Article.objects.filter(category=w["news"]).update(title="changed"),
    "qs_update_pk": lambda w: Article.objects.filter(pk=w["articles"][0].pk).update(
        title="changed"
    ),
    "qs_update_expression": lambda w: Article.objects.filter(pk=w["articles"][0].pk).update(
        title=Concat(Value("changed "), Substr(F("title"), 1, 50))
    ),
    "qs_delete": lambda w: Article.objects.filter(pk=w["articles"][0].pk).delete(),
    "bulk_create": lambda w: Article.objects.bulk_create(
        [baker.prepare(Article, category=w["news"], author=w["author"], title="changed")]
    ),
    "bulk_update": lambda w: (
        setattr(w["articles"][0], "title", "changed"),
        Article.objects.bulk_update([w["articles"][0]], ["title"]),
    ),
    "update_or_create": lambda w: Article.objects.update_or_create(
        pk=w["articles"][0].pk, defaults={"title": "changed"}
    ),
    "move_in": lambda w: (
        setattr(w["others"][0], "category", w["news"]),
        setattr(w["others"][0], "title", "changed"),
        w["others"][0].save(),
    ),
    "author_save": lambda w: (setattr(w["author"], "name", "changed"), w["author"].save()),
    "raw_sql": lambda w: _raw("UPDATE news_article SET title = 'changed'"),
    "raw_sql_cte": lambda w: _raw(
        "WITH x AS (SELECT id FROM news_article) UPDATE news_article SET title = 'changed' "
        "WHERE id IN (SELECT id FROM x)"
    ),
}


def _raw(sql: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql)


def _observed(world: dict) -> object:
    rows = news_list(world)
    return sorted((a.pk, a.title, a.author.name) for a in rows)


def _truth(world: dict) -> object:
    rows = Article.objects.filter(category=world["news"]).select_related("author")
    return sorted((a.pk, a.title, a.author.name) for a in rows)


@pytest.mark.parametrize("write", list(WRITES))
def test_every_write_path_invalidates(world: dict, write: str) -> None:
    before = _observed(world)
    assert _observed(world) == before  # cached
    WRITES[write](world)
    assert _truth(world) != before, "the write must change the list for this test to mean anything"
    assert _observed(world) == _truth(world)


def test_m2m_changes_invalidate_prefetched_lists(world: dict) -> None:
    article = world["articles"][1]
    tag = Tag.objects.first()

    def tags_of() -> list[str]:
        qs = Article.objects.filter(pk=article.pk).prefetch_related("tags").cache()
        return sorted(t.name for t in qs.get().tags.all())

    assert tags_of() == []
    for change, expected in (
        (lambda: article.tags.add(tag), [tag.name]),
        (lambda: article.tags.remove(tag), []),
        (lambda: article.tags.set([tag]), [tag.name]),
        (lambda: article.tags.clear(), []),
    ):
        tags_of()
        change()
        assert tags_of() == expected


# -- grain: unrelated writes keep hits -------------------------------------------------


def test_writes_to_other_rows_keep_a_filtered_list_cached(world: dict) -> None:
    news_list(world)
    other = world["others"][0]
    other.title = "elsewhere"
    other.save()  # another category's row: the news list is not affected
    with queries() as q:
        news_list(world)
    assert len(q) == 0
    # ...but an unfiltered list is.
    list(Article.objects.cache())
    other.save()
    with queries() as q:
        list(Article.objects.cache())
    assert len(q) == 1


def test_get_by_pk_survives_writes_to_other_rows(world: dict) -> None:
    pk = world["articles"][0].pk
    Article.objects.cache().get(pk=pk)
    world["articles"][1].save()
    Article.objects.filter(pk=world["articles"][2].pk).update(published_at=Now())
    with queries() as q:
        Article.objects.cache().get(pk=pk)
    assert len(q) == 0


def test_a_partial_update_without_the_foreign_key_invalidates_lists_filtered_on_it(
    world: dict,
) -> None:
    # The row's category is not in the UPDATE: which list it sits in is unknown,
    # so every list filtered on category goes (a row outside a sliced list may
    # now sort into it).
    newest = Article.objects.filter(category=world["news"]).order_by("-published_at")[:1]
    first = list(newest.cache())
    hidden = (
        world["articles"][2] if first[0].pk != world["articles"][2].pk else world["articles"][1]
    )
    Article.objects.filter(pk=hidden.pk).update(published_at=Now() + timedelta(days=1))
    again = list(newest.cache())
    assert again[0].pk == hidden.pk


# -- explicit invalidation -------------------------------------------------------------


def test_invalidate_model_instance_and_all(world: dict) -> None:
    for target in (Article, world["articles"][0]):
        news_list(world)
        assert invalidate(target) is True
        with queries() as q:
            news_list(world)
        assert len(q) == 1
    assert invalidate_all() is True
    with queries() as q:
        news_list(world)
    assert len(q) == 1
    with pytest.raises(TypeError):
        invalidate("news.Article")  # type: ignore[arg-type]


async def test_ainvalidate_all_makes_the_next_read_a_miss(world: dict) -> None:
    news = Article.objects.filter(category=world["news"]).cache()
    count = await news.acount()
    with record_request() as record:
        assert await news.acount() == count
    assert (record.cache.hits, record.cache.misses) == (1, 0)
    assert await ainvalidate_all() is True
    with record_request() as record:
        assert await news.acount() == count
    assert (record.cache.hits, record.cache.misses, record.db.count) == (0, 1, 1)


# -- transactions ------------------------------------------------------------------------


def test_inside_a_transaction_that_wrote_the_table_the_cache_is_neither_read_nor_filled(
    world: dict,
) -> None:
    news_list(world)
    list(Category.objects.cache())
    with transaction.atomic():
        with queries() as q:
            news_list(world)  # nothing written yet: a hit
        assert len(q) == 0
        article = world["articles"][0]
        article.title = "in transaction"
        article.save()
        with queries() as q:
            inside = news_list(world)
            news_list(world)
        assert len(q) == 2  # neither served nor stored
        assert "in transaction" in {a.title for a in inside}
        # Another table is still served (stored before the transaction: on
        # SQLite, reads inside a transaction are never stored).
        with queries() as q:
            list(Category.objects.cache())
        assert len(q) == 0
    assert "in transaction" in _titles(world)  # invalidated at commit


def test_a_rollback_leaves_nothing_stale(world: dict) -> None:
    before = _titles(world)
    with pytest.raises(RuntimeError), transaction.atomic():
        article = world["articles"][0]
        article.title = "rolled back"
        article.save()
        news_list(world)
        raise RuntimeError
    assert _titles(world) == before
    assert "rolled back" not in {a.title for a in Article.objects.all()}


def test_savepoint_rollback_drops_only_its_own_bumps(world: dict) -> None:
    news_list(world)
    with transaction.atomic():
        world["articles"][0].title = "kept"
        world["articles"][0].save()
        try:
            with transaction.atomic():
                world["articles"][1].title = "dropped"
                world["articles"][1].save()
                raise RuntimeError
        except RuntimeError:
            pass
    titles = _titles(world)
    assert "kept" in titles and "dropped" not in titles


# -- the read / compute / store race ---------------------------------------------------


def test_a_result_computed_before_a_committed_write_is_not_stored(world: dict) -> None:
    article = world["articles"][0]
    old_rows = list(Article.objects.filter(category=world["news"]).select_related("author"))

    def write_in_another_thread() -> None:
        def save() -> None:
            Article.objects.filter(pk=article.pk).update(title="committed meanwhile")
            connections.close_all()

        thread = threading.Thread(target=save)
        thread.start()
        thread.join()

    original = Article.objects.filter(category=world["news"]).select_related("author").cache()
    lookup = original._perfkit_lookup("rows")
    assert lookup is not None

    def compute() -> list[Article]:
        write_in_another_thread()  # the write commits after the rows were read
        return old_rows

    assert entries.get(lookup, compute) == old_rows  # this caller gets what it computed
    # ...but nobody else does.
    assert "committed meanwhile" in _titles(world)


# -- bad input -----------------------------------------------------------------------------


def test_cache_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="timeout"):
        Article.objects.cache(timeout=0)
    with pytest.raises(ValueError, match="timeout"):
        Article.objects.cache(timeout="5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key"):
        Article.objects.cache(key="")
    with pytest.raises(TypeError, match="select_for_update"):
        Article.objects.select_for_update().cache()


def test_select_for_update_after_cache_is_never_served_from_the_cache(world: dict) -> None:
    list(Article.objects.cache())
    with transaction.atomic(), queries() as q:
        list(Article.objects.cache().select_for_update())
    assert len(q) == 1


def test_results_over_max_bytes_are_not_stored_and_counted(world: dict) -> None:
    tiny = {"KEY_PREFIX": KEY_PREFIX, "CACHE": {"MAX_BYTES": 10}}
    with override_settings(PERFKIT=tiny), record_request() as record:
        news_list(world)
        news_list(world)
    assert record.cache.misses == 2
    assert record.cache.skipped == 2


def test_unpicklable_results_are_returned_not_stored(world: dict) -> None:
    lookup = Article.objects.cache()._perfkit_lookup("rows")
    assert lookup is not None
    lock = threading.Lock()
    with record_request() as record:
        assert entries.get(lookup, lambda: [lock]) == [lock]
    assert record.cache.skipped == 1
    assert get_gateway().run(lambda c: c.exists(lookup.entry), None) == 0


def test_an_explicit_key_names_the_entry(world: dict) -> None:
    qs = Article.objects.filter(category=world["news"]).cache(key="news-list")
    list(qs)
    assert (
        get_gateway().run(
            lambda c: len(list(c.scan_iter(match=f"{KEY_PREFIX}:*k:news.article:news-list*"))), 0
        )
        == 1
    )
    with queries() as q:
        list(Article.objects.filter(category=world["news"]).cache(key="news-list"))
    assert len(q) == 0
    world["articles"][0].save()
    with queries() as q:
        list(Article.objects.filter(category=world["news"]).cache(key="news-list"))
    assert len(q) == 1


def test_a_custom_queryset_class_works(world: dict) -> None:
    assert issubclass(type(Category.objects.all()), CachedQuerySet)
    comment = baker.make(Comment, article=world["articles"][0])

    # Comment has no cached manager: its writes still invalidate what read it.
    def counted() -> int:
        qs = Article.objects.filter(pk=world["articles"][0].pk).annotate(n=Count("comments"))
        return qs.cache().get().n

    assert counted() == 1
    comment.delete()
    assert counted() == 0


def test_get_by_a_unique_field_survives_writes_to_other_rows_and_sees_its_own(
    world: dict,
) -> None:
    article = world["articles"][0]
    assert Article.objects.cache().get(slug=article.slug).pk == article.pk
    world["articles"][1].title = "another row"
    world["articles"][1].save()
    with queries() as q:
        Article.objects.cache().get(slug=article.slug)
    assert len(q) == 0
    article.title = "this row"
    article.save()
    assert Article.objects.cache().get(slug=article.slug).title == "this row"


def test_a_missing_unique_value_is_found_once_a_row_takes_it(world: dict) -> None:
    with pytest.raises(Article.DoesNotExist):
        Article.objects.cache().get(slug="not-yet")
    other = world["others"][0]
    other.slug = "not-yet"
    other.save()
    assert Article.objects.cache().get(slug="not-yet").pk == other.pk
    # ...and when the row gives the value up, the old answer is not served.
    other.slug = "taken-back"
    other.save()
    with pytest.raises(Article.DoesNotExist):
        Article.objects.cache().get(slug="not-yet")


# -- the stored form ----------------------------------------------------------------------


def test_codec_round_trips_rows_with_related_objects_and_deferred_fields(world: dict) -> None:
    from django_perfkit.cache import codec

    rows = list(
        Article.objects.filter(category=world["news"])
        .select_related("author", "category")
        .defer("body")
        .order_by("pk")
    )
    data = codec.dumps(rows)
    assert data[:1] == b"R"
    with queries() as q:
        back = codec.loads(data)
        seen = [(a.pk, a.title, a.author.name, a.category.slug, a._state.db) for a in back]
    assert len(q) == 0
    assert seen == [(a.pk, a.title, a.author.name, a.category.slug, "default") for a in rows]
    assert all(not a._state.adding for a in back)
    assert back[0].body == rows[0].body  # the deferred field loads on access
    back[1].title = "saved from a cached instance"
    back[1].save()  # an UPDATE, not an INSERT
    assert Article.objects.get(pk=rows[1].pk).title == "saved from a cached instance"


def test_a_keyed_get_hit_builds_no_uncached_queryset(world: dict, monkeypatch) -> None:
    article = world["articles"][0]
    assert Article.objects.cache(key=f"a:{article.pk}").get(pk=article.pk) == article
    nocache = CachedQuerySetMixin.nocache
    made = []

    def counted(self):  # type: ignore[no-untyped-def]
        made.append(1)
        return nocache(self)

    monkeypatch.setattr(CachedQuerySetMixin, "nocache", counted)
    with queries() as q:
        assert Article.objects.cache(key=f"a:{article.pk}").get(pk=article.pk) == article
    assert (len(q), made) == (0, [])
    assert Article.objects.cache(key="other").get(pk=article.pk) == article  # a miss
    assert made == [1]


def test_the_manager_sets_cache_options_on_a_new_queryset_not_a_clone(
    world: dict, monkeypatch
) -> None:
    from django.db.models import QuerySet

    from django_perfkit.cache import CachedManager

    assert isinstance(Tag.objects, CachedManager)
    chains = []
    chain = QuerySet._chain

    def counted(self):  # type: ignore[no-untyped-def]
        chains.append(type(self))
        return chain(self)

    monkeypatch.setattr(QuerySet, "_chain", counted)
    qs = Tag.objects.cache(timeout=30, key="k")
    assert chains == []
    assert (qs._perfkit_cache.timeout, qs._perfkit_cache.key) == (30, "k")
    assert {t.pk for t in qs} == {t.pk for t in Tag.objects.all()}
    with pytest.raises(ValueError, match="timeout"):
        Tag.objects.cache(timeout=-1)
    with pytest.raises(ValueError, match="key"):
        Tag.objects.cache(key="a{b}")
    # A related manager's get_queryset() hands out its prefetched queryset,
    # which the instance holds: .cache() on it must not change that queryset.
    article = Article.objects.prefetch_related("tags").get(pk=world["articles"][0].pk)
    prefetched = article.tags.get_queryset()
    assert prefetched._result_cache is not None
    cached = article.tags.cache()
    assert cached is not prefetched
    assert prefetched._perfkit_cache is None
    # Nor a get_queryset() replaced on one manager instance.
    shared = Tag.objects.all()
    monkeypatch.setattr(Tag.objects, "get_queryset", lambda: shared)
    assert Tag.objects.cache() is not shared
    assert shared._perfkit_cache is None
    monkeypatch.undo()
    # A queryset class with its own cache() has it called.
    calls = []

    class OwnCache(CachedQuerySet):  # type: ignore[type-arg]
        def cache(self, timeout=None, key=None):  # type: ignore[no-untyped-def]
            calls.append(timeout)
            return super().cache(timeout or 123, key)

    manager = CachedManager.from_queryset(OwnCache)()
    manager.model = Tag
    assert manager.cache()._perfkit_cache.timeout == 123
    assert calls == [None]


def test_get_arguments_name_distinct_entries(world: dict) -> None:
    from django_perfkit.cache.queryset import _call_extra

    calls = [
        {"pk": 1},
        {"pk": "1"},
        {"pk": True},
        {"id": 1},
        {"a": "x", "b": 1},
        {"a": "x',b=1"},
        {"a": "x:y"},
        {"a": "x" * 100},
        {"a": "x" * 101},
        {},
    ]
    names = [_call_extra((), call) for call in calls]
    assert None not in names
    assert len(set(names)) == len(calls), names
    assert _call_extra((), {"b": 1, "a": "x"}) == _call_extra((), {"a": "x", "b": 1})
    assert all(":" not in name and "\n" not in name for name in names)
    # An int too long for repr() (sys.get_int_max_str_digits()) is named too.
    assert _call_extra((), {"pk": 10**5000}) not in (None, *names)
    # Slugs with colons and long strings read back the right rows.
    first, second = world["articles"][:2]
    Article.objects.filter(pk=first.pk).update(title="t:" + "x" * 80)
    Article.objects.filter(pk=second.pk).update(title="t:" + "y" * 80)
    for article, title in ((first, "t:" + "x" * 80), (second, "t:" + "y" * 80)):
        for _ in range(2):
            assert Article.objects.cache(key="by-title").get(title=title).pk == article.pk


def test_codec_stores_one_instance_as_a_row(world: dict) -> None:
    from django_perfkit.cache import codec

    article = Article.objects.select_related("author").get(pk=world["articles"][0].pk)
    data = codec.dumps(article)
    assert data[:1] == b"O"
    with queries() as q:
        back = codec.loads(data)
        seen = (back.pk, back.title, back.author.name, back._state.db, back._state.adding)
    assert len(q) == 0
    assert seen == (article.pk, article.title, article.author.name, "default", False)
    prefetched = Article.objects.prefetch_related("tags").get(pk=article.pk)
    assert codec.dumps(prefetched)[:1] == b"P"


def test_codec_pickles_what_it_cannot_store_as_rows(world: dict) -> None:
    from django_perfkit.cache import codec

    prefetched = list(Article.objects.prefetch_related("tags"))
    assert codec.dumps(prefetched)[:1] == b"P"
    assert codec.dumps({"n": 1})[:1] == b"P"
    assert codec.loads(codec.dumps([1, "a"])) == [1, "a"]
    with pytest.raises(ValueError):
        codec.loads(b"X")


# -- the demo site --------------------------------------------------------------------------


def test_the_demo_pages_are_served_from_the_cache(client, world: dict) -> None:
    article = world["articles"][0]
    for url in ("/", "/articles/", article.get_absolute_url(), "/api/articles/"):
        # Twice: the first evaluations in a process may name a query differently
        # while Django fills its own caches (see "Entry names" in docs/cache.md).
        assert client.get(url).status_code == 200
        assert client.get(url).status_code == 200
        with queries() as q:
            response = client.get(url)
        assert response.status_code == 200
        reads = [x["sql"] for x in q.captured_queries if x["sql"].startswith("SELECT")]
        assert reads == [], (url, reads)
    # A comment on the article shows at once (its list was invalidated).
    comment = baker.make(Comment, article=article, is_approved=True, body="fresh comment")
    assert comment.body in client.get(article.get_absolute_url()).content.decode()


def test_an_exception_from_the_query_propagates_and_releases_the_lock(world: dict) -> None:
    # This entry's lock only: a recompute deferred by an earlier test's write
    # may hold its own lock in a background thread at this moment.
    pattern = f"{KEY_PREFIX}:*:l:k:news.article:no-such-article:*"

    def locks() -> list[bytes]:
        return get_gateway().run(lambda c: list(c.scan_iter(match=pattern)), None)

    held_while_querying = []

    def look(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        held_while_querying.append(len(locks()))
        return execute(sql, params, many, context)

    with pytest.raises(Article.DoesNotExist), connection.execute_wrapper(look):
        Article.objects.cache(key="no-such-article").get(pk=-1)
    assert held_while_querying == [1]  # the pattern names the lock...
    assert locks() == []  # ...and the failed computation released it


# -- naming entries -------------------------------------------------------------------------


def test_a_query_keeps_its_name_after_queries_on_its_fields_are_compiled(world: dict) -> None:
    from django_perfkit.cache import analysis

    def name() -> bytes | None:
        qs = Article.objects.filter(category=world["news"], title__startswith="a")
        return analysis.fingerprint(qs.annotate(n=Count("tags")).order_by("-n"))

    before = name()
    list(
        Article.objects.filter(category=world["news"], title__startswith="b").annotate(
            n=Count("tags")
        )
    )
    assert name() == before


def test_different_queries_get_different_names(world: dict) -> None:
    from django.db.models import CharField, IntegerField
    from django.db.models.functions import Cast

    from django_perfkit.cache import analysis

    variants = [
        Article.objects.filter(pk=1),
        Article.objects.filter(pk=2),
        Article.objects.filter(pk=1).order_by("title"),
        Article.objects.filter(pk=1)[:1],
        Article.objects.filter(pk=1).select_related("author"),
        Article.objects.filter(pk=1).defer("body"),
        Article.objects.annotate(x=Cast("pk", IntegerField())),
        Article.objects.annotate(x=Cast("pk", CharField())),
        Article.objects.exclude(pk=1),
        Article.objects.filter(pk__in=[1, 2]),
        Article.objects.filter(title="1"),
    ]
    names = {
        analysis.entry_name(qs, "rows", "", analysis.fingerprint(qs) or b"") for qs in variants
    }
    assert len(names) == len(variants)
    # Aliases: the same query through another database is another entry.
    entries_by_alias = {
        Article.objects.using(alias).filter(pk=1).cache()._perfkit_lookup("rows").entry
        for alias in ("default", "other")
    }
    assert len(entries_by_alias) == 2
    # The same query built twice has one name.
    again = Article.objects.filter(pk=1)
    assert analysis.fingerprint(again) == analysis.fingerprint(Article.objects.filter(pk=1))


def test_a_write_perfkit_cannot_attribute_bumps_the_epoch(world: dict) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("a DO block is PostgreSQL's")
    before = _observed(world)
    _raw("DO $$ BEGIN UPDATE news_article SET title = 'from a DO block'; END $$")
    assert _observed(world) == _truth(world) != before


def test_migrations_start_a_new_epoch(world: dict) -> None:
    from django.core.management import call_command

    news_list(world)
    # A real migrate run (nothing left to apply): its post_migrate signal
    # bumps the epoch.
    call_command("migrate", verbosity=0, interactive=False)
    with record_request() as record:
        news_list(world)
    assert (record.cache.hits, record.cache.misses) == (0, 1)


def test_server_timing_shows_the_cache_of_a_real_request(client, world: dict) -> None:
    for _ in range(3):
        response = client.get("/articles/")
    header = response["Server-Timing"]
    assert "cache;dur=" in header
    hits = header.split("cache;dur=", 1)[1].split('desc="', 1)[1].split(" hit", 1)[0]
    assert int(hits) > 0 and ", 0 misses" in header


async def test_async_get_by_explicit_key_hits_without_the_database(world: dict) -> None:
    pk = world["articles"][0].pk
    first = await Article.objects.cache(key=f"a:{pk}").aget(pk=pk)
    with record_request() as record:
        again = await Article.objects.cache(key=f"a:{pk}").aget(pk=pk)
    assert (again.pk, again.title) == (first.pk, first.title)
    assert (record.db.count, record.cache.hits) == (0, 1)
    with pytest.raises(Article.DoesNotExist):
        await Article.objects.cache(key="a:none").aget(pk=-1)


# -- found in review: cases where a finer grain would have been wrong ------------------


def test_a_page_after_the_first_sees_writes_before_its_window(world: dict) -> None:
    def page_two() -> list[int]:
        qs = Article.objects.filter(category=world["news"]).order_by("pk")[1:3]
        return [a.pk for a in qs.cache()]

    before = page_two()
    world["articles"][0].delete()  # on page one: page two's window moves
    assert page_two() != before
    assert page_two() == [
        a.pk for a in Article.objects.filter(category=world["news"]).order_by("pk")[1:3]
    ]


def test_a_query_that_reads_its_own_table_again_depends_on_every_row(world: dict) -> None:
    def same_category_count() -> int:
        qs = Article.objects.filter(pk=world["articles"][0].pk)
        return qs.annotate(n=Count("category__articles")).cache().get().n

    assert same_category_count() == 3
    baker.make(Article, category=world["news"], author=world["author"])
    assert same_category_count() == 4


def test_related_manager_querysets_are_not_cached(world: dict) -> None:
    list(world["news"].articles.cache())
    with queries() as q:
        list(world["news"].articles.cache())
    assert len(q) == 1


def test_extra_tables_are_never_stored(world: dict) -> None:
    def evaluate() -> int:
        return len(Article.objects.extra(tables=["news_comment"]).cache())

    evaluate()
    with queries() as q:
        evaluate()
    assert len(q) == 1


def test_the_active_time_zone_is_part_of_the_name(world: dict) -> None:
    from django.utils import timezone as tz

    from django_perfkit.cache import analysis

    def name() -> str:
        qs = Article.objects.filter(published_at__date="2026-01-01")
        return analysis.entry_name(qs, "rows", "", analysis.fingerprint(qs) or b"")

    with tz.override("Europe/Paris"):
        paris = name()
    with tz.override("America/New_York"):
        new_york = name()
    assert paris != new_york


def test_get_arguments_are_named_by_their_state_not_their_repr(world: dict) -> None:
    a, b = world["news"], world["sport"]
    b.name = a.name  # same __str__, different rows
    b.save()
    first = Article.objects.cache(key="by-category").filter(author=world["author"])
    got_a = first.filter(category=a).first()
    got_b = (
        Article.objects.cache(key="by-category")
        .filter(author=world["author"])
        .get(pk=world["others"][0].pk, category=b)
    )
    assert got_a.category_id == a.pk and got_b.category_id == b.pk


def test_prefetch_tables_written_in_the_transaction_are_not_served(world: dict) -> None:
    article = world["articles"][1]
    tag = Tag.objects.first()

    def tags() -> list[str]:
        qs = Article.objects.filter(pk=article.pk).prefetch_related("tags").cache()
        return [t.name for t in qs.get().tags.all()]

    assert tags() == []
    with pytest.raises(RuntimeError), transaction.atomic():
        article.tags.add(tag)
        assert tags() == [tag.name]  # its own write, not the cached []
        raise RuntimeError
    assert tags() == []  # and nothing of the rolled-back transaction was stored


def test_a_raising_commit_hook_does_not_lose_a_bump(world: dict) -> None:
    news_list(world)

    def broken_hook() -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError), transaction.atomic():
        transaction.on_commit(broken_hook)
        world["articles"][2].title = "committed before the broken hook"
        world["articles"][2].save()
    assert "committed before the broken hook" in _titles(world)


def test_a_missed_bump_is_made_good_by_the_next_write(world: dict) -> None:
    from django_perfkit.versions import tokens

    epoch = tokens.tokens_for("default").epoch
    before = get_gateway().run(lambda c: c.get(epoch), None)
    tokens.mark_missed("default")
    world["articles"][0].save()  # a process that only writes
    assert get_gateway().run(lambda c: c.get(epoch), None) != before
    assert tokens._missed == {}


def test_snapshot_isolation_reads_are_not_stored() -> None:
    from django_perfkit.cache.queryset import snapshot_reads

    class Fake:
        def __init__(self, vendor: str, level: object, atomic: bool = True) -> None:
            self.vendor = vendor
            self.in_atomic_block = atomic
            self.settings_dict = {"OPTIONS": {"isolation_level": level}}

    assert snapshot_reads(Fake("sqlite", None))
    assert not snapshot_reads(Fake("sqlite", None, atomic=False))
    assert not snapshot_reads(Fake("postgresql", None))
    assert snapshot_reads(Fake("postgresql", "repeatable read"))
    assert not snapshot_reads(Fake("mysql", "read committed"))
    assert snapshot_reads(Fake("mysql", "serializable"))


def test_an_annotation_with_a_new_output_field_keeps_its_name(world: dict) -> None:
    from django.db.models import CharField
    from django.db.models.functions import Cast

    from django_perfkit.cache import analysis

    def name() -> bytes | None:
        return analysis.fingerprint(Article.objects.annotate(x=Cast("pk", CharField())))

    assert name() == name()


# -- naming without the query; a hit in one MGET ----------------------------------------


def _entry_keys(pattern: str) -> list[str]:
    client = get_gateway().client
    return sorted(k.decode() for k in client.scan_iter(match=f"{KEY_PREFIX}:*:q:{pattern}"))


def test_the_managers_own_queryset_names_get_by_its_arguments(world: dict) -> None:
    first, second = world["articles"][:2]
    assert Article.objects.cache().get(pk=first.pk) == first
    with queries() as q:
        assert Article.objects.cache().get(pk=first.pk) == first
        assert Article.objects.cache().get(pk=second.pk) != first  # its own entry
    assert len(q) == 1
    names = _entry_keys("p:news.article:*:rows:get/*")
    assert [n.rsplit(":", 1)[1] for n in names] == sorted(
        [f"get/pk={first.pk}", f"get/pk={second.pk}"]
    )
    # A clone is not the manager's queryset: its filter is part of its name.
    other = world["others"][0]
    with pytest.raises(Article.DoesNotExist):
        Article.objects.cache().filter(category=world["news"]).get(pk=other.pk)
    assert Article.objects.cache().get(pk=other.pk) == other
    # And the entry follows its row like any other.
    first.title = "renamed"
    first.save()
    assert Article.objects.cache().get(pk=first.pk).title == "renamed"


def test_a_lookup_in_get_is_named_with_the_time_zone(world: dict) -> None:
    from django.utils import timezone as tz

    from django_perfkit.cache.queryset import _call_extra

    with tz.override("Europe/Paris"):
        paris = _call_extra((), {"published_at__date": "2026-01-01"})
        plain = _call_extra((), {"pk": 1})
    with tz.override("America/New_York"):
        new_york = _call_extra((), {"published_at__date": "2026-01-01"})
        assert _call_extra((), {"pk": 1}) == plain == "pk=1"
    assert paris != new_york


def test_a_hit_read_by_mget_answers_as_the_read_script_does(world: dict) -> None:
    article = world["articles"][0]
    gateway = get_gateway()
    client = gateway.client
    Article.objects.cache().get(pk=article.pk)  # stored
    Article.objects.cache().get(pk=article.pk)  # read through READ: its tokens remembered
    (entry,) = _entry_keys(f"p:news.article:*:rows:get/pk={article.pk}")
    tokens = entries._token_keys[entry]
    assert len(tokens) >= 2  # the epoch, the row's token at least
    stored = client.get(entry)

    def both() -> tuple[object, object]:
        by_mget = entries.valid_payload(client.mget([entry, *tokens]), tokens)
        by_script = gateway.run_script(entries.READ, [entry], [], None)
        return by_mget, by_script

    by_mget, by_script = both()
    assert by_mget == by_script is not None
    saved = {t: client.get(t) for t in tokens}
    for token in tokens:
        client.set(token, b"moved")  # a write bumped it
        assert both() == (None, None)
        client.delete(token)  # evicted
        assert both() == (None, None)
        client.set(token, saved[token])
        assert both() == (by_script, by_script)
    client.delete(entry)
    assert both() == (None, None)
    # The same entry stored with other tokens (one more, or one fewer, or
    # another in its place): MGET cannot tell, READ is asked.
    count, rest = stored.split(b"\n", 1)
    header_len = int(count)
    extra = f"{KEY_PREFIX}:{{v:default}}:t:another".encode()
    client.set(extra, b"1")
    variants = [
        b"%d\n%s\n1\n%s" % (header_len + 1, extra, rest),
        b"%d\n%s" % (header_len - 1, rest.split(b"\n", 2)[2]),
        b"%d\n%s\n%s" % (header_len, extra, rest.split(b"\n", 1)[1]),
    ]
    for variant in variants:
        client.set(entry, variant)
        reply = entries.valid_payload(client.mget([entry, *tokens]), tokens)
        assert reply is entries._UNREAD
        client.set(entry, stored)
    client.delete(extra)


def test_a_hit_after_the_first_runs_no_script(world: dict, monkeypatch) -> None:
    article = world["articles"][0]
    for _ in range(2):
        assert Article.objects.cache().get(pk=article.pk) == article
    scripts: list[str] = []
    run_script = type(get_gateway()).run_script

    def spied(self, script, keys, args, default):  # type: ignore[no-untyped-def]
        scripts.append(script.name)
        return run_script(self, script, keys, args, default)

    monkeypatch.setattr(type(get_gateway()), "run_script", spied)
    with record_request() as record:
        assert Article.objects.cache().get(pk=article.pk) == article
    assert (scripts, record.cache.hits, record.db.count) == ([], 1, 0)
    # Stale: MGET sees the moved token, and the protocol takes over (a miss).
    article.title = "changed"
    article.save()
    with record_request() as record:
        assert Article.objects.cache().get(pk=article.pk).title == "changed"
    assert (record.cache.misses, record.db.count) == (1, 1)
    assert "cache.store" in scripts


# -- steps after .cache() recorded, not built ---------------------------------------------


def _chains(world: dict) -> list:
    news = world["news"]
    return [
        lambda qs: qs.filter(category=news),
        lambda qs: qs.filter(category=news).select_related("author").order_by("-title")[:2],
        lambda qs: qs.exclude(category=news).order_by("pk")[1:],
        lambda qs: qs.filter(title__startswith="a").exclude(pk=0),
        lambda qs: qs.select_related("author", "category").filter(category_id=news.pk),
        lambda qs: qs.order_by("title")[:3],
    ]


def test_recorded_steps_build_the_query_django_builds(world: dict) -> None:
    for chain in _chains(world):
        eager = chain(Article.objects.all())
        for recorded in (chain(Article.objects.cache()), chain(Article.objects.cache(key="k"))):
            assert recorded._perfkit_steps  # recorded, not built yet
            assert str(recorded.query) == str(eager.query)  # built on first use of .query
            assert not recorded._perfkit_steps
        for make in (Article.objects.cache, lambda: Article.objects.cache(key="k")):
            for _ in range(2):
                assert [a.pk for a in chain(make())] == [a.pk for a in eager]
                assert chain(make()).count() == eager.count()


def test_a_hit_on_recorded_steps_builds_nothing(world: dict, monkeypatch) -> None:
    from django.db.models.sql.query import Query

    news = world["news"]

    def read() -> tuple[list[int], int]:
        rows = Article.objects.cache().filter(category=news).select_related("author")[:10]
        return [a.pk for a in rows], Article.objects.cache(key="n").filter(category=news).count()

    expected = read()
    built = []
    add_q = Query.add_q

    def counted(self, q_object):  # type: ignore[no-untyped-def]
        built.append(q_object)
        return add_q(self, q_object)

    monkeypatch.setattr(Query, "add_q", counted)
    with queries() as q:
        assert read() == expected
    assert (len(q), built) == (0, [])
    # Another category is another entry; a write to the first is seen.
    sport = world["sport"]
    assert Article.objects.cache().filter(category=sport).count() == 2
    assert built  # a miss builds its query
    baker.make(Article, category=news, author=world["author"])
    assert read()[1] == expected[1] + 1
    assert len(read()[0]) == len(expected[0]) + 1


def test_recorded_steps_name_keyed_entries_too(world: dict) -> None:
    news, sport = world["news"], world["sport"]
    # The same key with other filters: other entries (before, the key alone
    # named them, and the second read got the first one's rows).
    assert Article.objects.cache(key="by-category").filter(category=news).count() == 3
    assert Article.objects.cache(key="by-category").filter(category=sport).count() == 2


def test_recorded_steps_keep_djangos_errors(world: dict) -> None:
    from django.core.exceptions import FieldError

    with pytest.raises(TypeError, match="slice has been taken"):
        Article.objects.cache()[:2].filter(pk=1)
    with pytest.raises(TypeError, match="slice has been taken"):
        Article.objects.cache(key="k")[:2].order_by("pk")
    # A misspelt field is reported when the queryset is first used.
    qs = Article.objects.cache().filter(no_such_field=1)
    with pytest.raises(FieldError, match="no_such_field"):
        list(qs)
    # Arguments that cannot be named (a lambda) are built at once.
    with pytest.raises(Exception):  # noqa: B017 (Django's own error, whatever it is)
        Article.objects.cache().filter(pk=lambda: 1).count()
    negative = Article.objects.cache()
    with pytest.raises(ValueError, match="Negative indexing"):
        negative[-1:]


async def test_async_reads_of_recorded_steps_hit_without_building(world: dict) -> None:
    news = world["news"]

    async def read() -> tuple[list[int], int, int]:
        rows = [a.pk async for a in Article.objects.cache().filter(category=news)[:10]]
        count = await Article.objects.cache(key="n").filter(category=news).acount()
        got = await Article.objects.cache().filter(category=news).aget(pk=rows[0])
        return rows, count, got.pk

    first = await read()
    with record_request() as record:
        again = await read()
    assert again == first and len(first[0]) == first[1] == 3
    assert (record.db.count, record.cache.hits, record.cache.misses) == (0, 3, 0)


# -- found in review: recorded steps -------------------------------------------------------


def test_a_keyed_queryset_changed_after_its_steps_are_built_is_named_by_its_query(
    world: dict,
) -> None:
    news, sport = world["news"], world["sport"]
    author = baker.make(Author)
    baker.make(Article, category=news, author=author)
    qs = Article.objects.cache(key="articles").filter(category=news)
    assert qs.count() == 4  # a miss: the steps are built into qs's query
    assert qs.filter(author=author).count() == 1  # recorded on the built query
    assert qs.filter(author=world["author"]).count() == 3
    # Methods that are not recorded drop the key: the query names the entry.
    for category, n in ((news, 4), (sport, 2)):
        for _ in range(2):
            rows = Article.objects.cache(key="k").prefetch_related("tags").filter(category=category)
            assert len(rows) == n


def test_a_query_set_by_hand_is_named_by_itself(world: dict) -> None:
    import pickle

    list(Article.objects.cache())  # the manager's own entry: every article
    for make in (Article.objects.cache, lambda: Article.objects.cache(key="all")):
        qs = make()
        qs.query = pickle.loads(pickle.dumps(Article.objects.filter(category=world["sport"]).query))
        assert {a.category_id for a in qs} == {world["sport"].pk}


def test_building_the_steps_twice_gives_the_same_query(world: dict) -> None:
    qs = Article.objects.cache().filter(category=world["news"]).order_by("pk")[1:3]
    steps = qs._perfkit_steps
    once = str(qs.query)
    # As if another thread had read the steps before this one reset them.
    qs._perfkit_steps = steps
    assert str(qs.query) == once
    expected = Article.objects.filter(category=world["news"]).order_by("pk")[1:3]
    assert [a.pk for a in qs] == [a.pk for a in expected]


def test_a_queryset_argument_is_named_without_running_it(world: dict) -> None:
    news = world["news"]

    def count() -> int:
        ids = Article.objects.filter(category=news).values("id")
        return Article.objects.cache().filter(id__in=ids).count()

    assert count() == 3
    with queries() as q:
        assert count() == 3
    assert len(q) == 0
    baker.make(Article, category=news, author=world["author"])
    assert count() == 4


def test_a_lazy_string_is_named_by_its_text_now() -> None:
    from django.utils.functional import lazy

    from django_perfkit.cache.queryset import _steps_text

    text = ["first"]
    value = lazy(lambda: text[0], str)()
    before = _steps_text((), {"name": value})
    text[0] = "second"
    assert _steps_text((), {"name": value}) != before


def test_a_librarys_own_as_manager_comes_first() -> None:
    from django.db import models as dj

    class LibraryManager(dj.Manager):  # type: ignore[type-arg]
        pass

    class LibraryQuerySet(dj.QuerySet):  # type: ignore[type-arg]
        @classmethod
        def as_manager(cls):  # type: ignore[no-untyped-def]
            return LibraryManager.from_queryset(cls)()

    class Mine(CachedQuerySetMixin, LibraryQuerySet):
        pass

    assert isinstance(Mine.as_manager(), LibraryManager)
    from django_perfkit.cache import CachedManager

    assert isinstance(CachedQuerySet.as_manager(), CachedManager)


def test_an_async_hit_under_wsgi_opens_no_client_per_call(world: dict, monkeypatch) -> None:
    from asgiref.sync import async_to_sync

    from django_perfkit.redis import gateway as gateway_module

    news = world["news"]

    async def read() -> int:
        return await Article.objects.cache().filter(category=news).acount()

    def in_a_thread() -> list[int]:
        try:
            return [async_to_sync(read)() for _ in range(3)]
        finally:
            connections.close_all()  # a miss queried from this thread

    results: list[list[int]] = []
    built = []
    build = gateway_module._build_async_client

    def counted(*args):  # type: ignore[no-untyped-def]
        built.append(1)
        return build(*args)

    worker = threading.Thread(target=lambda: results.append(in_a_thread()))
    worker.start()
    worker.join()
    monkeypatch.setattr(gateway_module, "_build_async_client", counted)
    worker = threading.Thread(target=lambda: results.append(in_a_thread()))
    worker.start()
    worker.join()
    assert results == [[3, 3, 3], [3, 3, 3]]
    assert built == []
