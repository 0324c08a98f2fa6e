"""Tests of the demo news site in ``testproject/`` (real database, no mocks)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import empty
from django.utils.html import escape
from model_bakery import baker

from django_perfkit.cache import flush_deferred
from django_perfkit.queries import NPlusOneDetected, capture
from testproject.envconfig import DatabaseURLError, parse_database_url, port_open, redact_url
from testproject.news.models import Article, ArticleStats, Author, Category, Comment, Tag
from testproject.news.views import PAGE_SIZE, SEARCH_LIMIT

REPO_ROOT = Path(__file__).resolve().parent.parent

MakeArticles = Callable[..., list[Article]]


@pytest.fixture
def make_articles() -> MakeArticles:
    """Create ``n`` published articles, each with its own author (and its own category
    unless one is given), 2 tags and 2 approved comments. Every call's articles are newer
    than the previous call's; within a call, index 0 is the newest."""
    tags = baker.make(Tag, _quantity=3)
    anchor = timezone.now() - timedelta(days=30)
    made = 0

    def make(n: int, *, category: Category | None = None, **attrs: Any) -> list[Article]:
        nonlocal made
        attrs.setdefault("is_published", True)
        articles = [
            baker.make(
                Article,
                author=baker.make(Author),
                category=category or baker.make(Category),
                published_at=anchor + timedelta(minutes=made + n - i),
                tags=tags[:2],
                **attrs,
            )
            for i in range(n)
        ]
        made += n
        for article in articles:
            baker.make(Comment, article=article, is_approved=True, _quantity=2)
        return articles

    return make


def count_queries(client: Client, url: str) -> tuple[int, Any]:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return len(ctx.captured_queries), response


# --- every route answers ----------------------------------------------------------------


@pytest.fixture
def naive_served(settings: Any) -> None:
    """The query guard logs instead of raising (its default under tests), so that
    the deliberately naive views answer: for tests that compare their output."""
    settings.PERFKIT = {**settings.PERFKIT, "QUERY_GUARD": {"MODE": "log"}}


NAIVE = pytest.mark.nplusone_expected


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("name", "query"),
    [
        ("news:home", ""),
        ("news:article_list", ""),
        ("news:article_list", "?page=2"),
        pytest.param("news:article_list_naive", "", marks=NAIVE),
        ("news:api_articles", ""),
        pytest.param("news:api_articles_naive", "", marks=NAIVE),
        ("news:api_articles_async", ""),
        ("news:search", ""),
        ("news:search", "?q=a"),
        ("news:login", ""),
        ("news:healthz", ""),
    ],
)
def test_routes_answer_200(
    client: Client, make_articles: MakeArticles, naive_served: None, name: str, query: str
) -> None:
    make_articles(3)
    response = client.get(reverse(name) + query)
    assert response.status_code == 200


def test_urls_are_the_documented_paths() -> None:
    assert reverse("news:home") == "/"
    assert reverse("news:article_list") == "/articles/"
    assert reverse("news:article_list_naive") == "/articles/naive/"
    assert reverse("news:article_detail", kwargs={"slug": "x"}) == "/articles/x/"
    assert reverse("news:article_comment", kwargs={"slug": "x"}) == "/articles/x/comment/"
    assert reverse("news:api_articles") == "/api/articles/"
    assert reverse("news:api_articles_naive") == "/api/articles/naive/"
    assert reverse("news:api_articles_async") == "/api/articles/async/"
    assert reverse("news:search") == "/search/"
    assert reverse("news:comments_by") == "/comments/"
    assert reverse("news:comments_by_naive") == "/comments/naive/"
    assert reverse("news:login") == "/login/"
    assert reverse("news:logout") == "/logout/"
    assert reverse("news:healthz") == "/healthz"
    assert reverse("admin:index") == "/admin/"


def test_healthz_is_plain_text_without_database(client: Client) -> None:
    # No django_db mark: pytest-django makes any database access here raise.
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.content == b"ok"
    assert response["Content-Type"].startswith("text/plain")


@pytest.mark.django_db
def test_admin_login_page(client: Client) -> None:
    assert client.get("/admin/").status_code == 302
    assert client.get("/admin/login/").status_code == 200


# --- home -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_home_lists_latest_and_per_category_in_few_queries(
    client: Client, make_articles: MakeArticles, django_assert_max_num_queries: Any
) -> None:
    science = baker.make(Category, name="Science", slug="science")
    sport = baker.make(Category, name="Sport", slug="sport")
    science_articles = make_articles(5, category=science)
    for _ in range(4):
        make_articles(1, category=sport)
    make_articles(6)  # newest of all, other categories

    # latest rows, their tags, categories, per-category rows; the comment counts
    # of the latest (one grouped query, here where nothing is stored yet) and
    # the "most discussed" block (computed once; writes keep both up to date).
    with django_assert_max_num_queries(6):
        response = client.get("/")
    assert response.status_code == 200
    assert len(response.context["latest"]) == 10
    blocks = {c.slug: c.latest_articles for c in response.context["categories"]}
    assert [a.pk for a in blocks["science"]] == [a.pk for a in science_articles[:3]]
    assert len(blocks["sport"]) == 3


# --- article lists: optimised vs deliberately naive ------------------------------------


@pytest.mark.django_db
def test_optimised_list_runs_constant_queries(
    client: Client, make_articles: MakeArticles, django_assert_num_queries: Any
) -> None:
    make_articles(5)
    # count, page rows (+joins), tags, and the comment counts not stored yet
    # (one grouped query; none once stored, see test_onwrite)
    with django_assert_num_queries(4):
        small = client.get("/articles/")
    make_articles(20)
    with django_assert_num_queries(4):
        large = client.get("/articles/")
    assert len(small.context["articles"]) == 5
    assert len(large.context["articles"]) == PAGE_SIZE
    assert large.context["page_obj"].paginator.num_pages == 2


@pytest.mark.django_db(transaction=True)
def test_a_new_comment_updates_the_list_count_without_invalidating_the_cached_page(
    client: Client, make_articles: MakeArticles
) -> None:
    articles = make_articles(3)
    client.get("/articles/")  # fills the page, the count and the comment counts
    before = client.get("/").context["most_discussed"]
    assert before[0]["slug"] == articles[0].slug  # 2 comments each: the newest first
    queries, _ = count_queries(client, "/articles/")
    assert queries == 0  # warm: rows from .cache(), counts from @cached_on_write
    client.post(f"/articles/{articles[1].slug}/comment/", {"author_name": "Ada", "body": "hi"})
    queries, response = count_queries(client, "/articles/")
    # The comment recomputed its article's count at commit; the cached page
    # does not read comments, so it was not invalidated.
    assert queries == 0
    counts = {a.pk: a.comment_count for a in response.context["articles"]}
    assert counts == {articles[0].pk: 2, articles[1].pk: 3, articles[2].pk: 2}
    # "Most discussed" (defer=True) was recomputed after the POST's response.
    assert flush_deferred(timeout=10)
    with CaptureQueriesContext(connection) as ctx:
        home = client.get("/")
    assert not [q for q in ctx.captured_queries if "COUNT" in q["sql"]]
    assert home.context["most_discussed"][0]["slug"] == articles[1].slug
    assert home.context["most_discussed"][0]["comments"] == 3


@pytest.mark.django_db(transaction=True)
def test_the_list_rows_are_a_cached_fragment_redrawn_only_for_their_own_comments(
    client: Client, make_articles: MakeArticles
) -> None:
    older = make_articles(3)  # page 2
    newer = make_articles(PAGE_SIZE)  # page 1
    client.get("/articles/")
    client.get("/articles/?page=2")
    # A hit: the fragment's body did not run, so the rows were never read.
    assert client.get("/articles/").context["articles"]._wrapped is empty
    client.post(f"/articles/{older[0].slug}/comment/", {"author_name": "Ada", "body": "hi"})
    # Page 1 shows none of that article's counts: still the stored fragment.
    page1 = client.get("/articles/")
    assert page1.context["articles"]._wrapped is empty
    page2 = client.get("/articles/?page=2")
    assert page2.context["articles"]._wrapped is not empty  # redrawn
    assert b"3 comments" in page2.content
    client.post(f"/articles/{newer[5].slug}/comment/", {"author_name": "Ada", "body": "hi"})
    page1 = client.get("/articles/")
    counts = {a.pk: a.comment_count for a in page1.context["articles"]}
    assert counts[newer[5].pk] == 3
    assert page1.content.count(b"3 comments") == 1


@pytest.mark.django_db(transaction=True)
def test_the_list_shows_an_edited_title_and_a_new_article(
    client: Client, make_articles: MakeArticles
) -> None:
    made = make_articles(3)
    client.get("/articles/")
    assert client.get("/articles/").context["articles"]._wrapped is empty  # stored fragment
    article = Article.objects.get(pk=made[0].pk)
    article.title = "Edited title"
    article.save()
    assert b"Edited title" in client.get("/articles/").content
    newest = make_articles(1)[0]
    assert escape(newest.title).encode() in client.get("/articles/").content


@pytest.mark.django_db
@NAIVE
def test_naive_list_query_count_grows_with_rows(
    client: Client, make_articles: MakeArticles, naive_served: None
) -> None:
    make_articles(5)
    naive_small, _ = count_queries(client, "/articles/naive/")
    optimised_small, _ = count_queries(client, "/articles/")
    make_articles(20)
    naive_large, response = count_queries(client, "/articles/naive/")
    optimised_large, _ = count_queries(client, "/articles/")

    assert optimised_small == optimised_large
    assert naive_large > naive_small
    # count + page, then author, category, tags and comment count per row: an N+1.
    assert naive_small == 2 + 4 * 5
    assert naive_large == 2 + 4 * PAGE_SIZE
    assert b"deliberately naive" in response.content


@pytest.mark.django_db
@NAIVE
def test_naive_and_optimised_lists_show_the_same_rows(
    client: Client, make_articles: MakeArticles, naive_served: None
) -> None:
    make_articles(PAGE_SIZE + 3)
    baker.make(Article, is_published=False, published_at=timezone.now())  # never listed
    for page in (1, 2):
        optimised = client.get(f"/articles/?page={page}").context["articles"]
        naive = client.get(f"/articles/naive/?page={page}").context["articles"]
        assert [a.pk for a in optimised] == [a.pk for a in naive]
        assert all(a.comment_count == 2 for a in optimised)
    assert len(client.get("/articles/?page=2").context["articles"]) == 3


# --- the query guard on the demo site -----------------------------------------------------


@pytest.mark.django_db
@NAIVE
def test_the_guard_catches_the_naive_list_and_names_each_fix(
    client: Client, make_articles: MakeArticles
) -> None:
    make_articles(3)
    # The default mode under tests is "raise": the test client re-raises it.
    with pytest.raises(NPlusOneDetected) as caught:
        client.get("/articles/naive/")
    text = str(caught.value)
    for relation, fix in [
        ("news.Article.author", 'select_related("author")'),
        ("news.Article.category", 'select_related("category")'),
        ("news.Article.tags", 'prefetch_related("tags")'),
        ("news.Article.comments", 'annotate(comments_count=Count("comments"))'),
    ]:
        assert f"N+1: {relation} x3" in text, relation
        assert fix in text
    assert "queryset built at testproject/news/views.py:" in text


@pytest.mark.django_db
@NAIVE
def test_the_guard_catches_the_naive_api(client: Client, make_articles: MakeArticles) -> None:
    make_articles(3)
    with pytest.raises(NPlusOneDetected) as caught:
        client.get("/api/articles/naive/")
    assert "N+1: news.Article.author x3" in str(caught.value)


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/", "/articles/", "/api/articles/", "/search/?q=a"])
def test_the_optimised_pages_have_no_nplusone(
    client: Client, make_articles: MakeArticles, url: str
) -> None:
    make_articles(PAGE_SIZE + 2)
    with capture() as report:
        assert client.get(url).status_code == 200
    assert report.nplusone == [], report
    assert report.unused_prefetches == [], report


@pytest.mark.django_db
@NAIVE
def test_warn_mode_serves_the_page_with_a_summary_header(
    client: Client, make_articles: MakeArticles, settings: Any, caplog: Any
) -> None:
    settings.DEBUG = True  # the header names code: DEBUG, staff or INTERNAL_IPS only
    settings.PERFKIT = {**settings.PERFKIT, "QUERY_GUARD": {"MODE": "warn"}}
    make_articles(3)
    response = client.get("/articles/naive/")
    assert response.status_code == 200
    header = response["X-Perfkit-Queries"]
    assert header.startswith("14 queries, 0 duplicates; N+1: ")
    assert "news.Article.author x3 at testproject/news/views.py:" in header
    assert "N+1: news.Article.author x3" in caplog.text
    quiet = client.get("/articles/")["X-Perfkit-Queries"]
    assert "queries, 0 duplicates" in quiet and "N+1" not in quiet
    settings.DEBUG = False  # an anonymous client outside INTERNAL_IPS sees no code
    assert "X-Perfkit-Queries" not in client.get("/articles/naive/")


# --- article detail and comments --------------------------------------------------------


@pytest.mark.django_db
def test_detail_shows_only_approved_comments_and_counts_views(
    client: Client, make_articles: MakeArticles
) -> None:
    (article,) = make_articles(1)
    baker.make(Comment, article=article, body="visible <b>bold</b>", is_approved=True)
    baker.make(Comment, article=article, body="hidden spam", is_approved=False)

    response = client.get(article.get_absolute_url())
    assert response.status_code == 200
    assert len(response.context["comments"]) == 3  # 2 from the fixture + 1
    assert b"visible &lt;b&gt;bold&lt;/b&gt;" in response.content
    assert b"hidden spam" not in response.content
    assert f'action="/articles/{article.slug}/comment/"'.encode() in response.content
    client.get(article.get_absolute_url())
    assert ArticleStats.objects.get(article=article).views == 2


@pytest.mark.django_db
def test_detail_404s(client: Client) -> None:
    hidden = baker.make(Article, is_published=False, published_at=timezone.now())
    assert client.get(f"/articles/{hidden.slug}/").status_code == 404
    assert client.get("/articles/no-such-article/").status_code == 404


@pytest.mark.django_db
def test_comment_post_creates_and_redirects(client: Client, make_articles: MakeArticles) -> None:
    (article,) = make_articles(1)
    url = f"/articles/{article.slug}/comment/"
    response = client.post(url, {"author_name": "Ada", "body": "Nice <i>piece</i>"})
    assert response.status_code in (302, 303)
    comment = Comment.objects.get(article=article, author_name="Ada")
    assert comment.body == "Nice <i>piece</i>"
    assert comment.is_approved
    assert response["Location"] == f"{article.get_absolute_url()}#comment-{comment.pk}"

    page = client.get(response["Location"])
    assert b"Nice &lt;i&gt;piece&lt;/i&gt;" in page.content
    assert "Thanks, your comment has been posted." in page.content.decode()


@pytest.mark.django_db
def test_comment_invalid_form_is_rejected(client: Client, make_articles: MakeArticles) -> None:
    (article,) = make_articles(1)
    before = Comment.objects.count()
    response = client.post(f"/articles/{article.slug}/comment/", {"author_name": "", "body": " "})
    assert response.status_code == 400
    assert response.context["form"].errors.keys() == {"author_name", "body"}
    assert Comment.objects.count() == before


@pytest.mark.django_db
def test_comment_get_is_405_and_unknown_article_404(
    client: Client, make_articles: MakeArticles
) -> None:
    (article,) = make_articles(1)
    assert client.get(f"/articles/{article.slug}/comment/").status_code == 405
    response = client.post("/articles/nope/comment/", {"author_name": "a", "body": "b"})
    assert response.status_code == 404


@pytest.mark.django_db
def test_comment_post_is_csrf_protected(make_articles: MakeArticles) -> None:
    (article,) = make_articles(1)
    client = Client(enforce_csrf_checks=True)
    url = f"/articles/{article.slug}/comment/"
    data = {"author_name": "Mallory", "body": "forged"}
    assert client.post(url, data).status_code == 403
    assert not Comment.objects.filter(author_name="Mallory").exists()

    client.get(article.get_absolute_url())  # sets the csrftoken cookie
    token = client.cookies["csrftoken"].value
    response = client.post(url, {**data, "csrfmiddlewaretoken": token})
    assert response.status_code in (302, 303)
    assert Comment.objects.filter(author_name="Mallory").exists()


# --- JSON API ---------------------------------------------------------------------------

ITEM_KEYS = {
    "id",
    "title",
    "slug",
    "url",
    "category",
    "author",
    "tags",
    "comment_count",
    "published_at",
}


@pytest.mark.django_db
def test_api_shape(client: Client, make_articles: MakeArticles) -> None:
    articles = make_articles(PAGE_SIZE + 1)
    response = client.get("/api/articles/")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    data = response.json()
    assert data["count"] == PAGE_SIZE + 1
    assert (data["page"], data["num_pages"], data["page_size"]) == (1, 2, PAGE_SIZE)
    assert data["previous"] is None
    assert data["next"] == "http://testserver/api/articles/?page=2"
    assert len(data["results"]) == PAGE_SIZE

    item = data["results"][0]
    newest = articles[0]
    assert set(item) == ITEM_KEYS
    assert item["id"] == newest.pk
    assert item["title"] == newest.title
    assert item["slug"] == newest.slug
    assert item["url"] == f"http://testserver/articles/{newest.slug}/"
    assert item["category"] == {"slug": newest.category.slug, "name": newest.category.name}
    assert item["author"] == {"id": newest.author.pk, "name": newest.author.name}
    assert item["tags"] == [{"slug": t.slug, "name": t.name} for t in newest.tags.all()]
    assert item["comment_count"] == 2
    assert item["published_at"] == newest.published_at.isoformat()

    page2 = client.get(data["next"]).json()
    assert [r["id"] for r in page2["results"]] == [articles[-1].pk]
    assert page2["previous"] == "http://testserver/api/articles/?page=1"
    assert page2["next"] is None


@pytest.mark.django_db
def test_api_category_filter_and_bad_pages(client: Client, make_articles: MakeArticles) -> None:
    science = baker.make(Category, slug="science")
    in_science = make_articles(2, category=science)
    make_articles(3)
    data = client.get("/api/articles/?category=science").json()
    assert data["count"] == 2
    assert [r["id"] for r in data["results"]] == [a.pk for a in in_science]
    assert client.get("/api/articles/?category=unknown").json()["count"] == 0

    assert client.get("/api/articles/?page=abc").status_code == 400
    assert client.get("/api/articles/?page=0").status_code == 404
    response = client.get("/api/articles/?page=99")
    assert response.status_code == 404
    assert "error" in response.json()


@pytest.mark.django_db
@NAIVE
def test_api_naive_returns_same_json_with_more_queries(
    client: Client, make_articles: MakeArticles, naive_served: None
) -> None:
    make_articles(PAGE_SIZE + 2)
    for query in ("", "?page=2"):
        fast_queries, fast = count_queries(client, "/api/articles/" + query)
        naive_queries, naive = count_queries(client, "/api/articles/naive/" + query)
        fast_data, naive_data = fast.json(), naive.json()
        # Only the self-links differ (they name the endpoint).
        for key in ("next", "previous"):
            fast_data.pop(key), naive_data.pop(key)
        assert fast_data == naive_data
        assert fast_queries == 4  # count, rows, tags, comment counts (grouped)
        assert naive_queries == 2 + 4 * len(fast_data["results"])


# --- async view -------------------------------------------------------------------------


@pytest.fixture
def api_articles(transactional_db: None) -> list[Article]:
    science = baker.make(Category, slug="science")
    tags = baker.make(Tag, _quantity=2)
    now = timezone.now()
    articles = [
        baker.make(
            Article,
            is_published=True,
            published_at=now - timedelta(hours=i),
            category=science if i % 2 else baker.make(Category),
            tags=tags,
        )
        for i in range(PAGE_SIZE + 5)
    ]
    for article in articles[:3]:
        baker.make(Comment, article=article, _quantity=3)
    return articles


@pytest.mark.django_db(transaction=True)
async def test_async_api_returns_same_items_as_sync(
    async_client: Any, client: Client, api_articles: list[Article]
) -> None:
    for query in ("", "?page=2", "?category=science"):
        async_response = await async_client.get("/api/articles/async/" + query)
        sync_response = await sync_to_async(client.get)("/api/articles/" + query)
        assert async_response.status_code == sync_response.status_code == 200
        async_data, sync_data = async_response.json(), sync_response.json()
        assert async_data["results"] == sync_data["results"]
        assert async_data["count"] == sync_data["count"]
        assert async_data["results"]
    first = (await async_client.get("/api/articles/async/")).json()["results"][0]
    assert first["comment_count"] == 3
    assert len(first["tags"]) == 2
    bad = await async_client.get("/api/articles/async/?page=x")
    assert bad.status_code == 400


# --- search -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_search_by_title(
    client: Client, make_articles: MakeArticles, django_assert_max_num_queries: Any
) -> None:
    (match,) = make_articles(1, title="Rate Limits Explained")
    make_articles(1, title="Cache Layers")
    make_articles(1, title="Hidden rate limits", is_published=False)
    with django_assert_max_num_queries(3):  # rows, tags, comment counts
        response = client.get("/search/", {"q": "  rate LIMITS "})
    assert response.status_code == 200
    assert [a.pk for a in response.context["results"]] == [match.pk]
    assert response.context["query"] == "rate LIMITS"
    assert b"Rate Limits Explained" in response.content
    assert b"Cache Layers" not in response.content

    empty = client.get("/search/")
    assert empty.context["results"] == []


@pytest.mark.django_db
def test_search_caps_results(client: Client, make_articles: MakeArticles) -> None:
    make_articles(SEARCH_LIMIT + 5, title="Same words")
    response = client.get("/search/?q=same")
    assert len(response.context["results"]) == SEARCH_LIMIT


@pytest.mark.django_db
def test_search_escapes_html(client: Client, make_articles: MakeArticles) -> None:
    make_articles(1, title="<script>alert('title')</script> news")
    response = client.get("/search/", {"q": "<script>alert('x')</script>"})
    assert response.status_code == 200
    assert b"<script>alert" not in response.content
    assert b"&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in response.content

    response = client.get("/search/", {"q": "script"})
    assert b"<script>alert" not in response.content
    assert b"&lt;script&gt;alert(&#x27;title&#x27;)&lt;/script&gt; news" in response.content


# --- login / logout ---------------------------------------------------------------------


@pytest.mark.django_db
def test_login_and_logout(client: Client) -> None:
    User.objects.create_user("reader", password="correct horse battery")
    page = client.get("/login/")
    assert page.status_code == 200
    assert b'name="password"' in page.content

    bad = client.post("/login/", {"username": "reader", "password": "wrong"})
    assert bad.status_code == 200
    assert "_auth_user_id" not in client.session

    good = client.post("/login/", {"username": "reader", "password": "correct horse battery"})
    assert good.status_code == 302
    assert client.session["_auth_user_id"] == str(User.objects.get(username="reader").pk)
    assert b"reader" in client.get("/").content

    assert client.get("/logout/").status_code == 405
    out = client.post("/logout/")
    assert out.status_code == 302
    assert out["Location"] == "/"
    assert "_auth_user_id" not in client.session


# --- management commands ----------------------------------------------------------------


@pytest.mark.django_db
def test_seed_creates_requested_rows_and_if_empty_skips() -> None:
    out = StringIO()
    call_command("seed", articles=20, comments=50, seed=7, stdout=out)
    assert "Seeded 20 articles, 50 comments" in out.getvalue()
    assert Article.objects.count() == 20
    assert Comment.objects.count() == 50
    assert Category.objects.count() == 8
    assert Tag.objects.count() == 30
    assert Author.objects.count() == 40
    assert User.objects.get(username="demo").check_password("demo-password")
    assert User.objects.get(username="admin").is_superuser
    assert all(0 <= a.tags.count() <= 4 for a in Article.objects.all())
    now = timezone.now()
    assert all(now - timedelta(days=731) <= a.published_at <= now for a in Article.objects.all())
    assert all(c.created_at >= c.article.published_at for c in Comment.objects.all())
    assert Article.objects.values("slug").distinct().count() == 20

    out = StringIO()
    call_command("seed", "--articles", "20", "--comments", "50", "--if-empty", stdout=out)
    assert "skipping" in out.getvalue()
    assert (Article.objects.count(), Comment.objects.count()) == (20, 50)

    # Without --if-empty it adds more, with fresh unique slugs and no duplicate users.
    call_command("seed", articles=5, stdout=StringIO())
    assert (Article.objects.count(), Comment.objects.count()) == (25, 100)
    assert Category.objects.count() == 8
    assert User.objects.filter(username__in=["demo", "admin"]).count() == 2


@pytest.mark.django_db
def test_seed_is_deterministic() -> None:
    call_command("seed", articles=10, comments=10, seed=3, stdout=StringIO())
    first = list(Article.objects.order_by("pk").values_list("title", "published_at__date"))
    Comment.objects.all().delete()
    Article.objects.all().delete()
    Author.objects.all().delete()
    call_command("seed", articles=10, comments=10, seed=3, stdout=StringIO())
    second = list(Article.objects.order_by("pk").values_list("title", "published_at__date"))
    assert [t for t, _ in first] == [t for t, _ in second]


@pytest.mark.django_db
def test_prepare_db_is_idempotent() -> None:
    out = StringIO()
    call_command("prepare_db", stdout=out)
    call_command("prepare_db", stdout=out)
    if connection.vendor == "postgresql":
        # The (test) database exists already, so both runs only report it.
        assert out.getvalue().count("already exists") == 2
    else:
        assert out.getvalue().count("nothing to prepare") == 2


# --- settings helpers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgres://u%40x:p%3Aw@db.example:6543/news",
            {
                "NAME": "news",
                "USER": "u@x",
                "PASSWORD": "p:w",
                "HOST": "db.example",
                "PORT": "6543",
            },
        ),
        (
            "postgresql://postgres@127.0.0.1/perfkit_demo?sslmode=require",
            {
                "NAME": "perfkit_demo",
                "HOST": "127.0.0.1",
                "PORT": "",
                "OPTIONS": {"sslmode": "require"},
            },
        ),
        ("sqlite:///:memory:", {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}),
        ("sqlite:///db.sqlite3", {"NAME": "db.sqlite3"}),
        ("sqlite:////tmp/demo.sqlite3", {"NAME": "/tmp/demo.sqlite3"}),
    ],
)
def test_parse_database_url(url: str, expected: dict[str, Any]) -> None:
    config = parse_database_url(url)
    assert config.items() >= expected.items()
    if url.startswith("postgres"):
        assert config["ENGINE"] == "django.db.backends.postgresql"
        assert config["CONN_MAX_AGE"] == 60


@pytest.mark.parametrize("url", ["mysql://h/db", "postgres://host/", "sqlite://", "nonsense"])
def test_parse_database_url_rejects(url: str) -> None:
    with pytest.raises(DatabaseURLError):
        parse_database_url(url)


def test_redact_url_and_port_probe() -> None:
    assert redact_url("redis://:secret@cache:6380/1") == "redis://cache:6380/1"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port_open("127.0.0.1", port)
    assert not port_open("127.0.0.1", port, timeout=0.3)


def _run_demo_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DJANGO_SETTINGS_MODULE", "PERFKIT_DEMO_QUIET", "DATABASE_URL", "REDIS_URL"}
    }
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_settings_from_env_urls_and_single_banner() -> None:
    code = (
        "import importlib, json; import testproject.settings as s; importlib.reload(s); "
        "print(json.dumps({'db': s.DATABASES['default'], 'cache': s.CACHES['default'], "
        "'perfkit': s.PERFKIT, 'mw': s.MIDDLEWARE, 'apps': s.INSTALLED_APPS, "
        "'sessions': s.SESSION_ENGINE}, default=str))"
    )
    env = {"DATABASE_URL": "sqlite:///:memory:", "REDIS_URL": "redis://:pw@127.0.0.1:6379/0"}
    result = _run_demo_python(code, **env)
    assert result.stderr.splitlines() == [
        "perfkit demo: database=sqlite (:memory:) cache=redis://127.0.0.1:6379/0"
    ]
    data = json.loads(result.stdout)
    assert data["db"] == {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
    assert data["cache"]["BACKEND"] == "django_redis.cache.RedisCache"
    assert data["cache"]["KEY_PREFIX"] == "perfkit-demo"
    assert data["cache"]["OPTIONS"]["IGNORE_EXCEPTIONS"] is True
    assert data["perfkit"] == {
        "REDIS_CACHE_ALIAS": "default",
        "KEY_PREFIX": "perfkit-demo",
        "QUERY_GUARD": {"MODE": "warn"},
    }
    assert data["mw"][0] == "django_perfkit.middleware.PerfkitMiddleware"
    assert data["apps"][-2:] == ["django_perfkit", "testproject.news"]
    assert data["sessions"] == "django.contrib.sessions.backends.db"

    quiet = _run_demo_python("import testproject.settings", PERFKIT_DEMO_QUIET="1", **env)
    assert quiet.stderr == ""


def test_settings_fall_back_to_sqlite_and_locmem_when_nothing_answers() -> None:
    code = (
        "import json, testproject.envconfig as e; e.port_open = lambda *a, **k: False; "
        "import testproject.settings as s; "
        "print(json.dumps([str(s.DATABASES['default']['NAME']), s.CACHES['default']['BACKEND'], "
        "s.PERFKIT], default=str))"
    )
    result = _run_demo_python(code)
    assert result.stderr.splitlines() == [
        "perfkit demo: database=sqlite (testproject/db.sqlite3) cache=locmem (Redis not reachable)"
    ]
    name, backend, perfkit = json.loads(result.stdout)
    assert name == str(REPO_ROOT / "testproject" / "db.sqlite3")
    assert backend == "django.core.cache.backends.locmem.LocMemCache"
    assert perfkit == {
        "REDIS_CACHE_ALIAS": None,
        "KEY_PREFIX": "perfkit-demo",
        "QUERY_GUARD": {"MODE": "warn"},
    }


def test_manage_py_runs_from_repo_root() -> None:
    clean = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run(
        [sys.executable, "testproject/manage.py", "showmigrations", "news", "--plan"],
        cwd=REPO_ROOT,
        env={**clean, "DATABASE_URL": "sqlite:///:memory:", "PERFKIT_DEMO_QUIET": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "news.0001_initial" in result.stdout
