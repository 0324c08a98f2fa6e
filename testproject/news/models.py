"""Models of the demo news site."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse

from django_perfkit.cache import CachedManager, CachedQuerySetMixin

if TYPE_CHECKING:
    from django.db.models.query import QuerySet


class Category(models.Model):
    name = models.CharField(max_length=80)
    slug = models.SlugField(max_length=80, unique=True)

    objects = CachedManager()

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "categories"

    def __str__(self) -> str:
        return self.name


class Author(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="news_authors",
    )
    name = models.CharField(max_length=120)
    bio = models.TextField(blank=True)

    objects = CachedManager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Tag(models.Model):
    name = models.CharField(max_length=50)
    slug = models.SlugField(max_length=50, unique=True)

    objects = CachedManager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ArticleQuerySet(CachedQuerySetMixin, models.QuerySet["Article"]):
    def published(self) -> ArticleQuerySet:
        return self.filter(is_published=True)

    def newest_first(self) -> ArticleQuerySet:
        """Explicit, total order for pagination.

        Needed even though ``Meta.ordering`` says the same: Django ignores
        ``Meta.ordering`` in ``GROUP BY`` queries such as :meth:`for_listing`'s.
        """
        return self.order_by("-published_at", "-pk")

    def for_listing(self) -> ArticleQuerySet:
        """Everything a list row renders but the comment count, in a constant number of queries.

        One query for the rows (author and category joined) and one for all their
        tags, however many rows there are. The comment count is not annotated: it
        is read from Redis with ``news.stats.with_comment_counts()``, kept up to
        date by comment writes (``@cached_on_write``). So a new comment does not
        invalidate the cached list pages, and no page counts comments.
        """
        return self.select_related("author", "category").prefetch_related("tags")


class Article(models.Model):
    title = models.CharField(max_length=200)
    slug = models.SlugField(max_length=220, unique=True)
    body = models.TextField()
    category = models.ForeignKey(Category, on_delete=models.PROTECT, related_name="articles")
    author = models.ForeignKey(Author, on_delete=models.PROTECT, related_name="articles")
    tags = models.ManyToManyField(Tag, blank=True, related_name="articles")
    published_at = models.DateTimeField(db_index=True)
    is_published = models.BooleanField(default=True)

    objects = ArticleQuerySet.as_manager()

    class Meta:
        ordering = ["-published_at"]

    def __str__(self) -> str:
        return self.title

    def get_absolute_url(self) -> str:
        return reverse("news:article_detail", kwargs={"slug": self.slug})

    def approved_comments(self) -> QuerySet[Comment]:
        # Through Comment.objects, not self.comments: a related manager's
        # queryset is never cached (it hands rows this very instance).
        return Comment.objects.filter(article=self, is_approved=True)


class ArticleStats(models.Model):
    """Counters written on every page view, kept out of the cached ``Article`` row.

    A write to a row invalidates every cached result that contains it. With the
    view counter on ``Article``, each view of an article would throw away its own
    cached page; in a table of its own it touches nothing that is cached.
    """

    article = models.OneToOneField(
        Article, on_delete=models.CASCADE, primary_key=True, related_name="stats"
    )
    views = models.PositiveIntegerField(default=0)

    class Meta:
        verbose_name_plural = "article stats"

    def __str__(self) -> str:
        return f"{self.views} views of article #{self.article_id}"


class Comment(models.Model):
    article = models.ForeignKey(Article, on_delete=models.CASCADE, related_name="comments")
    author_name = models.CharField(max_length=80)
    body = models.TextField(max_length=5000)
    created_at = models.DateTimeField(auto_now_add=True)
    is_approved = models.BooleanField(default=True)

    objects = CachedManager()

    class Meta:
        ordering = ["created_at"]
        indexes = [
            # A commenter's latest approved comments (views.comments_by): found by
            # name, read newest first, without a sort. The index perfkit's advisor
            # names for the same query on UnindexedComment (migration 0004).
            models.Index(
                fields=["author_name", "created_at"],
                name="comment_author_create_idx",
                condition=Q(is_approved=True),
            ),
        ]

    def __str__(self) -> str:
        return f"Comment by {self.author_name} on article #{self.article_id}"


class UnindexedComment(models.Model):
    """DELIBERATELY UNINDEXED copy of :class:`Comment` -- a missing index on purpose.

    The same columns and rows (migration 0003 copies the comments, ``seed``
    writes both), with no index but the primary key: not on ``author_name``,
    not even on the ``article`` key. :func:`views.comments_by_naive` runs on it
    the query :func:`views.comments_by` runs on ``Comment``, so perfkit's index
    advisor has a real sequential scan to find, side by side with the fixed
    version. Keep it unindexed; nothing writes to it but ``seed``.
    """

    # No constraint and DO_NOTHING: deleting an article neither fails on nor
    # visits this demo table (no extra query in Comment's or Article's writes).
    article = models.ForeignKey(
        Article,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    author_name = models.CharField(max_length=80)
    body = models.TextField(max_length=5000)
    created_at = models.DateTimeField()
    is_approved = models.BooleanField(default=True)

    def __str__(self) -> str:
        return f"Comment by {self.author_name} on article #{self.article_id} (unindexed copy)"
