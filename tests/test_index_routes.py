"""The demo's route pair for the index advisor: ``/comments/`` and ``/comments/naive/``.

The same query (a commenter's latest approved comments) on ``Comment``, which
has the index migration 0004 adds, and on ``UnindexedComment``, the same rows
without it. On PostgreSQL (and SQLite), with 30,000 rows, the advisor names the
missing index on the naive page and says nothing on the indexed one.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection, models
from django.db.models import Q
from django.test import Client
from django.utils import timezone

from django_perfkit.queries import capture
from django_perfkit.queries import indexes as advisor
from testproject.news.management.commands.seed import _auto_now_add_suspended
from testproject.news.models import Article, Author, Category, Comment, UnindexedComment

pytestmark = pytest.mark.django_db(transaction=True)

COMMENTS = 30_000  # above INDEXES["MIN_ROWS"] (10,000), as the demo's 20,000 are
COMMENTERS = 300  # about 100 comments each: a name is a selective filter
ARTICLES = 20
READER = "Reader 7"


def _make_comments(count: int) -> None:
    """``count`` comments on 20 articles, written to both tables alike."""
    category = Category.objects.create(name="World", slug="world")
    author = Author.objects.create(name="Grace H.")
    now = timezone.now()
    articles = Article.objects.bulk_create(
        Article(
            title=f"Story {i}",
            slug=f"story-{i}",
            body="Text.",
            category=category,
            author=author,
            published_at=now - timedelta(days=i),
        )
        for i in range(ARTICLES)
    )
    rows = [
        {
            "article_id": articles[i % ARTICLES].pk,
            "author_name": f"Reader {i % COMMENTERS}",
            "body": f"Comment {i}.",
            "created_at": now - timedelta(minutes=i),
            "is_approved": i % 10 != 3,
        }
        for i in range(count)
    ]
    with _auto_now_add_suspended(Comment, "created_at"):
        Comment.objects.bulk_create((Comment(**row) for row in rows), batch_size=5000)
    UnindexedComment.objects.bulk_create((UnindexedComment(**row) for row in rows), batch_size=5000)


@pytest.fixture
def comments() -> Iterator[None]:
    _make_comments(COMMENTS)
    if connection.vendor == "postgresql":
        # Statistics as a running site has them (seed runs ANALYZE too): the
        # planner's and the advisor's row estimates come from them.
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE news_article, news_comment, news_unindexedcomment")
    advisor.forget()
    yield
    advisor.forget()


@pytest.fixture
def few_comments() -> None:
    _make_comments(COMMENTERS)


def _row(comment: Any) -> tuple[Any, ...]:
    return (comment.article_id, comment.author_name, comment.body, comment.created_at)


@pytest.mark.index_advice_expected  # the naive page, on purpose
def test_the_naive_page_gets_advice_naming_the_column_and_the_model(
    comments: None, client: Client
) -> None:
    with capture(explain=True) as report:
        response = client.get("/comments/naive/", {"author": READER})
    assert response.status_code == 200
    assert len(response.context["comments"]) == 20
    assert b"deliberately unindexed" in response.content
    (advice,) = report.index_advice
    assert advice.model == "news.UnindexedComment"
    # Equality first, then the ordering the LIMIT reads; approved only: a partial index.
    assert advice.fields == ["author_name", "created_at"]
    assert "condition=Q(is_approved=True)" in advice.suggestion
    assert advice.table_rows >= COMMENTS * 0.8  # an estimate, not a count
    assert advice.location is not None
    assert advice.location.endswith(" in comments_by_naive")
    assert "news/views.py:" in advice.location
    # What it asks for is the index Comment has (migration 0004).
    (index,) = Comment._meta.indexes
    assert index.fields == advice.fields
    assert index.condition == Q(is_approved=True)


@pytest.mark.index_advice_expected  # the naive page, on purpose
def test_the_indexed_page_gets_no_advice_and_shows_the_same_comments(
    comments: None, client: Client
) -> None:
    explained = advisor.stats["explained"]
    with capture(explain=True) as report:
        indexed = client.get("/comments/", {"author": READER})
    assert indexed.status_code == 200
    assert report.count >= 1 and advisor.stats["explained"] > explained  # it was explained
    assert report.index_advice == []
    naive = client.get("/comments/naive/", {"author": READER})
    rows = [_row(c) for c in indexed.context["comments"]]
    assert len(rows) == 20
    assert rows == [_row(c) for c in naive.context["comments"]]
    assert [r[3] for r in rows] == sorted((r[3] for r in rows), reverse=True)  # newest first
    assert all(c.is_approved for c in indexed.context["comments"])


@pytest.mark.index_advice_expected  # the naive page, on purpose
def test_adding_the_suggested_index_silences_the_naive_page(comments: None, client: Client) -> None:
    with capture(explain=True) as report:
        client.get("/comments/naive/", {"author": READER})
    (advice,) = report.index_advice
    # The advice's own code, as written: "add models.Index(...) to UnindexedComment.Meta...".
    code = re.search(r"add (models\.Index\(.*\)) to UnindexedComment\.Meta", advice.suggestion)
    assert code is not None
    index = eval(code.group(1), {"models": models, "Q": Q})  # the text a developer pastes
    with connection.schema_editor() as editor:
        editor.add_index(UnindexedComment, index)
    try:
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE news_unindexedcomment")
        advisor.forget()
        with capture(explain=True) as report:
            response = client.get("/comments/naive/", {"author": READER})
        assert len(response.context["comments"]) == 20
        assert report.index_advice == []
    finally:
        with connection.schema_editor() as editor:
            editor.remove_index(UnindexedComment, index)


def test_without_a_commenter_the_pages_ask_for_one(client: Client) -> None:
    for path in ("/comments/", "/comments/naive/"):
        with capture() as report:
            response = client.get(path)
        assert response.status_code == 200
        assert b'name="author"' in response.content
        assert not [q for q in report.queries if "comment" in q.sql]  # no comment query


def test_the_article_page_links_commenters_to_their_comments(
    few_comments: None, client: Client
) -> None:
    article = Article.objects.order_by("pk").first()
    assert article is not None
    response = client.get(article.get_absolute_url())
    assert b'href="/comments/?author=Reader%200"' in response.content


def test_seed_writes_every_comment_to_both_tables() -> None:
    call_command("seed", "--articles", "5", "--comments", "60", stdout=StringIO())
    assert UnindexedComment.objects.count() == Comment.objects.count() == 60
    ordering = ("author_name", "created_at", "body")
    assert list(Comment.objects.order_by(*ordering).values_list(*ordering)) == list(
        UnindexedComment.objects.order_by(*ordering).values_list(*ordering)
    )


def test_migration_0003_copies_the_comments_already_there(few_comments: None) -> None:
    UnindexedComment.objects.all().delete()
    migration = importlib.import_module("testproject.news.migrations.0003_unindexedcomment")
    with connection.schema_editor() as editor:
        migration.copy_comments(None, editor)
    columns = ("article_id", "author_name", "body", "created_at", "is_approved")
    copied = list(UnindexedComment.objects.order_by("created_at").values_list(*columns))
    assert len(copied) == COMMENTERS
    assert copied == list(Comment.objects.order_by("created_at").values_list(*columns))
