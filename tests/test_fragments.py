"""Cached fragments: ``{% cached_as %}`` and ``cached_fragment()``, on real Redis and PostgreSQL."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
import redis
from django.conf import settings
from django.core.paginator import Paginator
from django.db import connections, transaction
from django.template import Context, Engine, TemplateSyntaxError
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import translation
from model_bakery import baker

from django_perfkit.cache import fragments
from django_perfkit.cache.onwrite import registry
from django_perfkit.record import record_request
from testproject.news.models import Article, Author, Category, Comment, Tag
from testproject.news.stats import comment_count, with_comment_counts
from tests.settings import KEY_PREFIX

pytestmark = pytest.mark.django_db(transaction=True)

ENGINE = Engine(
    libraries={
        "perfkit_cache": "django_perfkit.templatetags.perfkit_cache",
        "i18n": "django.templatetags.i18n",
    }
)


@pytest.fixture
def world() -> dict[str, Any]:
    news, sport = baker.make(Category, _quantity=2)
    author = baker.make(Author, name="Ada")
    articles = [baker.make(Article, category=news, author=author, title=f"n{i}") for i in range(3)]
    baker.make(Article, category=sport, author=author, title="s0")
    return {"news": news, "sport": sport, "author": author, "articles": articles}


def news_rows(world: dict[str, Any]) -> Any:
    return Article.objects.filter(category=world["news"]).select_related("author").order_by("pk")


class Body:
    """A fragment body that counts its renders and reads its queryset."""

    def __init__(self, rows: Any) -> None:
        self.rows = rows
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return ",".join(f"{a.title}/{a.author.name}" for a in self.rows)


def render(world: dict[str, Any], name: str = "rows", **options: Any) -> tuple[str, Body]:
    body = Body(news_rows(world))
    text = fragments.cached_fragment(name, [body.rows], body, **options)
    return text, body


def fragment_keys() -> list[bytes]:
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        return list(client.scan_iter(match=f"{KEY_PREFIX}:*:h:*"))
    finally:
        client.close()


# -- hits and what invalidates them -------------------------------------------------------


def test_a_hit_runs_no_query_and_no_body(world: dict[str, Any]) -> None:
    first, body = render(world)
    assert body.calls == 1
    assert first == "n0/Ada,n1/Ada,n2/Ada"
    with CaptureQueriesContext(connections["default"]) as q, record_request() as record:
        second, again = render(world)
    assert second == first
    assert again.calls == 0
    assert len(q) == 0
    assert (record.cache.hits, record.cache.misses) == (1, 0)


def test_a_write_to_a_shown_row_renders_it_again(world: dict[str, Any]) -> None:
    render(world)
    article = world["articles"][1]
    article.title = "changed"
    article.save()
    text, body = render(world)
    assert body.calls == 1
    assert text == "n0/Ada,changed/Ada,n2/Ada"


def test_a_write_to_a_joined_table_renders_it_again(world: dict[str, Any]) -> None:
    render(world)
    Author.objects.filter(pk=world["author"].pk).update(name="Grace")
    text, _body = render(world)
    assert text == "n0/Grace,n1/Grace,n2/Grace"


def test_a_new_matching_row_renders_it_again(world: dict[str, Any]) -> None:
    render(world)
    baker.make(Article, category=world["news"], author=world["author"], title="n3")
    text, _body = render(world)
    assert text.endswith(",n3/Ada")


def test_writes_to_tables_the_fragment_does_not_show_keep_it(world: dict[str, Any]) -> None:
    render(world)
    baker.make(Tag)
    baker.make(Comment, article=world["articles"][0])
    _text, body = render(world)
    assert body.calls == 0


def test_vary_and_timeout(world: dict[str, Any]) -> None:
    render(world, vary=("en", 1), timeout=30)
    _text, same = render(world, vary=("en", 1), timeout=30)
    _text, other = render(world, vary=("fr", 1), timeout=30)
    assert (same.calls, other.calls) == (0, 1)
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        ttls = [client.pttl(key) for key in fragment_keys()]
    finally:
        client.close()
    assert len(ttls) == 2
    assert all(0 < ttl <= 30_000 for ttl in ttls)


def test_a_write_during_the_render_keeps_the_result_from_being_stored(
    world: dict[str, Any],
) -> None:
    # The read/compute/store race: another connection commits a change to a
    # shown row after the fragment captured its tokens and before it stored.
    article = world["articles"][0]
    rows = news_rows(world)

    def body() -> str:
        text = ",".join(a.title for a in rows)

        def write() -> None:
            Article.objects.filter(pk=article.pk).update(title="late")
            connections.close_all()

        writer = threading.Thread(target=write)
        writer.start()
        writer.join()
        return text

    assert fragments.cached_fragment("race", [rows], body) == "n0,n1,n2"
    assert fragment_keys() == []  # refused: the token moved
    text, _body = render(world, name="race")
    assert text.startswith("late/")


# -- what is not stored --------------------------------------------------------------------


def test_an_evaluated_queryset_is_rendered_but_not_stored(
    world: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    rows = news_rows(world)
    list(rows)
    body = Body(rows)
    with caplog.at_level(logging.WARNING, logger="django_perfkit.cache"):
        assert fragments.cached_fragment("evaluated", [rows], body) == "n0/Ada,n1/Ada,n2/Ada"
    assert body.calls == 1
    assert fragment_keys() == []
    assert "evaluated before the fragment began" in caplog.text
    # A stored entry is still served: it is checked against the tokens when read.
    render(world, name="evaluated")
    again = Body(rows)
    fragments.cached_fragment("evaluated", [rows], again)
    assert again.calls == 0


def test_a_body_that_reads_an_uncovered_table_is_not_stored(
    world: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:

    def show(*extra: Any) -> str:
        rows = news_rows(world)

        def body() -> str:
            return f"{len(list(rows))} rows, {Tag.objects.count()} tags"

        return fragments.cached_fragment("uncovered", [rows, *extra], body)

    with caplog.at_level(logging.WARNING, logger="django_perfkit.cache"):
        show()
        show()
    assert fragment_keys() == []
    assert "news_tag" in caplog.text
    assert caplog.text.count("news_tag") == 1  # warned once
    # With a queryset of tags among the samples, it is stored.
    show(Tag.objects.all())
    assert len(fragment_keys()) == 1


def test_a_cached_read_inside_the_body_is_depended_on(world: dict[str, Any]) -> None:
    # A hit runs no SQL: the fragment depends on the tokens the hit was valid
    # under, whatever its own querysets are.
    list(Tag.objects.all().cache())  # stored

    def show() -> str:
        rows = news_rows(world)

        def body() -> str:
            return f"{len(list(rows))} rows, {len(list(Tag.objects.all().cache()))} tags"

        return fragments.cached_fragment("nested", [rows], body)

    assert show() == "3 rows, 0 tags"
    assert len(fragment_keys()) == 1
    baker.make(Tag)
    assert show() == "3 rows, 1 tags"


def test_an_on_write_value_inside_the_body_is_depended_on(world: dict[str, Any]) -> None:
    article, other = world["articles"][0], world["articles"][1]
    comment_count(article_id=article.pk)  # stored
    calls = []

    def show() -> str:
        rows = Article.objects.filter(pk=article.pk)

        def body() -> str:
            calls.append(1)
            list(rows)
            return str(comment_count(article_id=article.pk))

        return fragments.cached_fragment("counts", [rows], body)

    assert show() == "0"
    baker.make(Comment, article=other)  # another article's count: not this fragment's
    assert show() == "0"
    assert len(calls) == 1
    baker.make(Comment, article=article)
    assert show() == "1"


@pytest.mark.parametrize("write", ["edit", "insert", "joined"])
def test_a_cached_sample_read_in_the_body_reaches_the_fragment(
    world: dict[str, Any], write: str
) -> None:
    # The sample is itself a .cache() queryset: the body reads it through its
    # entry, whose tokens (the table's scan token among them) the fragment
    # records, though it also captured some of them itself.
    def show() -> str:
        rows = Article.objects.select_related("author").order_by("pk").cache()
        body = lambda: "|".join(f"{a.title}/{a.author.name}" for a in rows)  # noqa: E731
        return fragments.cached_fragment("cached-sample", [rows], body)

    assert show() == "n0/Ada|n1/Ada|n2/Ada|s0/Ada"
    assert show() == "n0/Ada|n1/Ada|n2/Ada|s0/Ada"
    assert len(fragment_keys()) == 1
    if write == "edit":
        article = world["articles"][0]
        article.title = "changed"
        article.save()
        assert show().startswith("changed/Ada|")
    elif write == "insert":
        baker.make(Article, category=world["sport"], author=world["author"], title="zz")
        assert show().endswith("|zz/Ada")
    else:
        author = world["author"]
        author.name = "Grace"
        author.save()
        assert show() == "n0/Grace|n1/Grace|n2/Grace|s0/Grace"


def test_a_value_read_between_a_write_and_its_on_write_refresh_is_not_kept(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A comment's INSERT moves the table's tokens at once; its on-write value
    # is refreshed a moment later. A fragment rendered in between reads the old
    # count: it must stop matching when the refresh lands, not stay stale.
    article = world["articles"][0]
    comment_count(article_id=article.pk)

    def show() -> str:
        rows = Article.objects.filter(pk=article.pk)

        def body() -> str:
            list(rows)
            return str(comment_count(article_id=article.pk))

        return fragments.cached_fragment("race", [rows, Comment.objects.all()], body)

    assert show() == "0"
    original = registry.refresh
    seen = []

    def refresh(items: Any) -> Any:
        seen.append(show())  # a concurrent request, inside the window
        assert len(fragment_keys()) == 1  # stored then, with the count's tokens
        return original(items)

    monkeypatch.setattr(registry, "refresh", refresh)
    baker.make(Comment, article=article)
    monkeypatch.setattr(registry, "refresh", original)
    assert seen == ["0"]
    assert show() == "1"


def test_other_rows_of_a_sample_table_read_by_sql_are_depended_on(
    world: dict[str, Any],
) -> None:
    # The sample is filtered on a foreign key; the body also shows other rows
    # of the same table. Every write to the table must reach the fragment.
    def show() -> str:
        rows = Article.objects.filter(category=world["news"]).order_by("pk")
        sport = Article.objects.filter(category=world["sport"]).order_by("pk")

        def body() -> str:
            return "|".join(a.title for a in rows) + " / " + "|".join(a.title for a in sport)

        return fragments.cached_fragment("fk", [rows], body)

    assert show() == "n0|n1|n2 / s0"
    assert len(fragment_keys()) == 1
    baker.make(Article, category=world["sport"], author=world["author"], title="s1")
    assert show() == "n0|n1|n2 / s0|s1"


def test_other_rows_read_through_cache_are_depended_on(world: dict[str, Any]) -> None:
    article = world["articles"][0]
    sport = Article.objects.filter(category=world["sport"])
    list(sport.cache())

    def show() -> str:
        one = Article.objects.filter(pk=article.pk)

        def body() -> str:
            titles = "|".join(a.title for a in sport.cache())
            return "|".join(a.title for a in one) + " / " + titles

        return fragments.cached_fragment("pk", [one], body)

    assert show() == "n0 / s0"
    assert len(fragment_keys()) == 1
    other = Article.objects.get(category=world["sport"])
    other.title = "changed"
    other.save()
    assert show() == "n0 / changed"


def test_values_computed_by_get_many_inside_the_body_are_depended_on(
    world: dict[str, Any],
) -> None:
    articles = world["articles"]

    def show() -> str:
        rows = news_rows(world)

        def body() -> str:
            return ",".join(str(a.comment_count) for a in with_comment_counts(rows))

        return fragments.cached_fragment("many", [rows], body)

    assert show() == "0,0,0"  # the counts computed in one query, inside the body
    assert len(fragment_keys()) == 1
    baker.make(Comment, article=articles[2])
    assert show() == "0,0,1"


def test_inside_a_transaction_that_wrote_it_renders_without_reading(
    world: dict[str, Any],
) -> None:
    render(world)
    with transaction.atomic():
        Article.objects.filter(pk=world["articles"][0].pk).update(title="uncommitted")
        text, body = render(world)
        assert body.calls == 1
        assert text.startswith("uncommitted/")
    text, _body = render(world)
    assert text.startswith("uncommitted/")


@pytest.mark.parametrize(
    "perfkit",
    [{"ENABLED": False}, {"CACHE": {"ENABLED": False}}],
    ids=["perfkit-off", "cache-off"],
)
def test_switched_off_renders_every_time(world: dict[str, Any], perfkit: dict[str, Any]) -> None:
    with override_settings(PERFKIT={"KEY_PREFIX": KEY_PREFIX, **perfkit}):
        render(world)
        _text, body = render(world)
    assert body.calls == 1
    assert fragment_keys() == []


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "samples", "options", "message"),
    [
        ("", "rows", {}, "non-empty string"),
        ("x", None, {}, "at least one queryset"),
        ("x", "list", {}, "is not a QuerySet"),
        ("x", "rows", {"timeout": 0}, "seconds > 0"),
        ("x", "rows", {"vary": threading.Lock()}, "cannot be pickled"),
    ],
)
def test_bad_arguments_say_what_to_give(
    world: dict[str, Any], name: str, samples: str | None, options: dict[str, Any], message: str
) -> None:
    rows = news_rows(world)
    given = {"rows": [rows], "list": [list(rows)], None: []}[samples]
    with pytest.raises((TypeError, ValueError), match=message):
        fragments.cached_fragment(name, given, lambda: "", **options)


# -- the template tag ----------------------------------------------------------------------

TEMPLATE = (
    "{% load perfkit_cache %}"
    '<ul>{% cached_as "tag-rows" rows timeout=60 vary=lang %}'
    "{% for a in rows %}<li>{{ a.title }}</li>{% endfor %}{{ counter.tick }}"
    "{% endcached_as %}</ul>"
)


class Counter:
    def __init__(self) -> None:
        self.ticks = 0

    def tick(self) -> str:
        self.ticks += 1
        return ""


def render_tag(world: dict[str, Any], source: str = TEMPLATE, lang: str = "en") -> tuple[str, int]:
    counter = Counter()
    context = Context({"rows": news_rows(world), "lang": lang, "counter": counter})
    return ENGINE.from_string(source).render(context), counter.ticks


def test_the_tag_caches_its_body(world: dict[str, Any]) -> None:
    assert render_tag(world) == ("<ul><li>n0</li><li>n1</li><li>n2</li></ul>", 1)
    assert render_tag(world) == ("<ul><li>n0</li><li>n1</li><li>n2</li></ul>", 0)
    assert render_tag(world, lang="fr")[1] == 1
    Article.objects.filter(pk=world["articles"][2].pk).update(title="<b>x</b>")
    # Re-rendered after the write, and escaped like any other output.
    assert render_tag(world)[0] == "<ul><li>n0</li><li>n1</li><li>&lt;b&gt;x&lt;/b&gt;</li></ul>"


def test_editing_the_body_changes_the_entry(world: dict[str, Any]) -> None:
    render_tag(world)
    edited = TEMPLATE.replace("<li>{{ a.title }}</li>", "<li>{{ a.title|upper }}</li>")
    assert render_tag(world, edited) == ("<ul><li>N0</li><li>N1</li><li>N2</li></ul>", 1)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('{% cached_as "x" %}{% endcached_as %}', "at least one queryset"),
        ('{% cached_as "x" rows ttl=3 %}{% endcached_as %}', "unknown option 'ttl'"),
        ('{% cached_as "x" rows timeout=3 timeout=4 %}{% endcached_as %}', "given twice"),
        ('{% cached_as "x" timeout=3 rows %}{% endcached_as %}', "after an option"),
        ('{% cached_as "x" rows %}', "endcached_as"),
    ],
)
def test_tag_syntax_errors_at_parse_time(source: str, message: str) -> None:
    with pytest.raises(TemplateSyntaxError, match=message):
        ENGINE.from_string("{% load perfkit_cache %}" + source)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('{% cached_as "x" titles %}{% endcached_as %}', "not a QuerySet"),
        ('{% cached_as "x" rows timeout="soon" %}{% endcached_as %}', "seconds > 0"),
        ("{% cached_as missing rows %}{% endcached_as %}", "non-empty string"),
    ],
)
def test_tag_value_errors_at_render_time_raise_under_debug(
    world: dict[str, Any], source: str, message: str
) -> None:
    template = ENGINE.from_string("{% load perfkit_cache %}" + source)
    context = Context({"rows": news_rows(world), "titles": ["a"]})
    with override_settings(DEBUG=True), pytest.raises(TemplateSyntaxError, match=message):
        template.render(context)


def test_a_list_given_at_render_time_is_rendered_uncached_in_production(
    world: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    # Page.__getitem__ turns page.object_list into a list: iterating the page
    # before the fragment makes its "queryset" a list. A page, not a 500.
    page = Paginator(news_rows(world), 2).get_page(1)
    source = (
        "{% load perfkit_cache %}{% for a in page_obj %}{% endfor %}"
        '{% cached_as "p" page_obj.object_list %}{{ page_obj.object_list|length }}'
        "{% endcached_as %}"
    )
    template = ENGINE.from_string(source)
    with override_settings(DEBUG=False), caplog.at_level(logging.WARNING):
        assert template.render(Context({"page_obj": page})) == "2"
    assert "not a QuerySet" in caplog.text
    assert fragment_keys() == []
    with override_settings(DEBUG=True), pytest.raises(TemplateSyntaxError, match="QuerySet"):
        template.render(Context({"page_obj": page}))


def test_each_language_has_its_own_entry(world: dict[str, Any]) -> None:
    template = ENGINE.from_string(
        '{% load perfkit_cache i18n %}{% cached_as "l" rows %}'
        "{% get_current_language as lang %}{{ lang }}{% endcached_as %}"
    )
    with override_settings(USE_I18N=True):
        with translation.override("en"):
            assert template.render(Context({"rows": news_rows(world)})) == "en"
        with translation.override("fr"):
            assert template.render(Context({"rows": news_rows(world)})) == "fr"
    assert len(fragment_keys()) == 2


def test_tag_with_redis_down_renders_the_body(world: dict[str, Any]) -> None:
    perfkit = {
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "KEY_PREFIX": KEY_PREFIX,
        "REDIS_TIMEOUT": 0.05,
    }
    with override_settings(PERFKIT=perfkit):
        assert render_tag(world)[1] == 1
        assert render_tag(world) == ("<ul><li>n0</li><li>n1</li><li>n2</li></ul>", 1)
