"""Values the demo computes when comments are written, not when pages are read.

``comment_count`` and ``most_discussed`` are ``@cached_on_write`` functions: a
comment saved or deleted recomputes the affected values once its transaction
commits, so the article list and the home page read them from Redis and never
count comments themselves. This module is imported by ``NewsConfig.ready()``:
the receivers that refresh the values must exist in every process that writes
comments (the web workers, and also ``manage.py seed`` and the shell).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db.models import Count

from django_perfkit.cache import cached_on_write

from .models import Article, Comment

MOST_DISCUSSED = 5


@cached_on_write(depends_on={Comment: lambda comment: {"article_id": comment.article_id}})
def comment_count(article_id: int) -> int:
    """Comments on one article (every comment, as the naive list counts them)."""
    return Comment.objects.filter(article_id=article_id).count()


@cached_on_write(
    depends_on={
        # Any comment can change the ranking, and an article's title, slug or
        # publication shows in it: every write to either refreshes the one entry.
        Comment: lambda comment: {},
        Article: lambda article: {},
    },
    # A burst of comments costs one recompute of this aggregate, not one each.
    defer=True,
)
def most_discussed() -> list[dict[str, Any]]:
    """The published articles with the most comments (plain dicts: small to store)."""
    rows = (
        Article.objects.filter(is_published=True)
        .annotate(comments_total=Count("comments"))
        .filter(comments_total__gt=0)
        .order_by("-comments_total", "-published_at", "-pk")
        .values("pk", "title", "slug", "comments_total")[:MOST_DISCUSSED]
    )
    return [{"title": r["title"], "slug": r["slug"], "comments": r["comments_total"]} for r in rows]


def count_comments_of(calls: list[dict[str, Any]]) -> list[int]:
    """``comment_count`` of several articles in one grouped query (for the misses of a page)."""
    ids = [call["article_id"] for call in calls]
    rows = (
        Comment.objects.filter(article_id__in=ids)
        .order_by()
        .values_list("article_id")
        .annotate(n=Count("pk"))
    )
    counts = dict(rows)
    return [counts.get(article_id, 0) for article_id in ids]


def with_comment_counts(articles: Iterable[Article]) -> list[Article]:
    """Set ``article.comment_count`` on each article.

    The stored counts come in one Redis round trip; the ones not stored yet (the
    first view of new articles) in one query, and are stored.
    """
    articles = list(articles)
    calls = [{"article_id": a.pk} for a in articles]
    counts = comment_count.get_many(calls, compute_many=count_comments_of)
    for article, count in zip(articles, counts, strict=True):
        article.comment_count = count  # type: ignore[attr-defined]
    return articles


async def awith_comment_counts(articles: list[Article]) -> list[Article]:
    """The async form of :func:`with_comment_counts`."""
    calls = [{"article_id": a.pk} for a in articles]
    counts = await comment_count.aget_many(calls, compute_many=count_comments_of)
    for article, count in zip(articles, counts, strict=True):
        article.comment_count = count  # type: ignore[attr-defined]
    return articles


__all__ = ["awith_comment_counts", "comment_count", "most_discussed", "with_comment_counts"]
