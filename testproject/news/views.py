"""Views of the demo news site.

Most views are written the way a careful Django developer would write them: a constant
number of queries per request, and the hot reads (home page blocks, lists, the article
page, the API) served from Redis with perfkit's ``.cache()``. Two are *deliberately
naive* (``article_list_naive`` and ``api_articles_naive``): they issue one query per row
and related object (an N+1) so django-perfkit's query guards and profiler have a real
problem to find. Do not "fix" them, and do not cache them. ``comments_by_naive`` is
the third: the same query as ``comments_by``, on a copy of the comments table without
its index (``UnindexedComment``), so the index advisor has a real scan to find.
"""

from __future__ import annotations

from math import ceil
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count, F, Prefetch, Q
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.utils.functional import SimpleLazyObject
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST, require_safe

from django_perfkit import ratelimit

from .forms import CommentForm
from .models import Article, ArticleQuerySet, ArticleStats, Category, Comment, UnindexedComment
from .stats import awith_comment_counts, most_discussed, with_comment_counts

PAGE_SIZE = 20
HOME_LATEST = 10
HOME_PER_CATEGORY = 3
SEARCH_LIMIT = 50
SEARCH_MAX_QUERY_LENGTH = 100
COMMENTS_BY_LIMIT = 20


def demo_rate(name: str) -> Any:
    """A rate read per request from ``settings.NEWS_RATELIMITS`` (None: no limit),
    so a load test can lift the demo's limits without editing views."""

    def rate(group: str, request: HttpRequest) -> str | None:
        return getattr(settings, "NEWS_RATELIMITS", {}).get(name)  # type: ignore[no-any-return]

    return rate


# --- HTML pages -------------------------------------------------------------------------


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    """Latest articles plus the latest few per category, with each category's count.

    Uncached, four queries; the per-category block uses a sliced ``Prefetch`` (a window
    function in SQL), so the number of queries does not grow with the number of
    categories. Cached (``.cache()``), none until an article, comment, tag or category
    is written.
    """
    latest = Article.objects.published().newest_first().for_listing()[:HOME_LATEST].cache()
    per_category = Article.objects.published().newest_first().select_related("author")
    per_category = per_category[:HOME_PER_CATEGORY]
    categories = list(
        Category.objects.annotate(
            published_count=Count("articles", filter=Q(articles__is_published=True))
        )
        .prefetch_related(Prefetch("articles", queryset=per_category, to_attr="latest_articles"))
        .cache()
    )
    context = {
        "latest": with_comment_counts(latest),
        "categories": categories,
        # Computed when comments are written (news.stats): read, never counted here.
        "most_discussed": most_discussed(),
    }
    return render(request, "news/home.html", context)


@require_safe
def article_list(request: HttpRequest) -> HttpResponse:
    """Paginated article list: three queries (count, rows, tags) whatever the page size.

    Cached: the count and each page are entries of their own, and the rendered
    rows are a fragment (``{% cached_as %}`` in the template) that depends on
    what its body reads: the page's rows and their comment counts (each
    count's own entry, so a comment re-renders only the pages showing its
    article). The rows reach the template unevaluated, wrapped so that the
    fragment's body is what reads them and their counts: a hit reads neither.
    """
    listing = Article.objects.published().newest_first().for_listing().cache()
    paginator = Paginator(listing, PAGE_SIZE)
    page = paginator.get_page(request.GET.get("page"))
    rows = page.object_list
    return render(
        request,
        "news/article_list.html",
        {
            "page_obj": page,
            "rows": rows,
            "articles": SimpleLazyObject(lambda: with_comment_counts(rows)),
            "naive": False,
        },
    )


@require_safe
def article_list_naive(request: HttpRequest) -> HttpResponse:
    """DELIBERATELY NAIVE copy of :func:`article_list` -- an N+1 on purpose.

    No ``select_related``, ``prefetch_related`` or ``annotate``: the template reads
    ``article.author.name``, ``article.category.name``, ``article.tags.all`` and
    ``article.comments.count`` for every row, i.e. 2 + 4 x rows queries. It exists so
    django-perfkit has a real N+1 to detect; keep it naive.
    """
    paginator = Paginator(Article.objects.published().newest_first(), PAGE_SIZE)
    page = paginator.get_page(request.GET.get("page"))
    return render(
        request,
        "news/article_list_naive.html",
        {"page_obj": page, "articles": page.object_list, "naive": True},
    )


def _render_detail(
    request: HttpRequest, article: Article, form: CommentForm, *, status: int = 200
) -> HttpResponse:
    # Filtered on the article (a foreign key): a comment on another article
    # leaves this list cached.
    comments = list(article.approved_comments().cache())
    return render(
        request,
        "news/article_detail.html",
        {"article": article, "comments": comments, "form": form},
        status=status,
    )


def _get_published_article(slug: str) -> Article:
    queryset = Article.objects.published().select_related("author", "category")
    # By slug, a unique column: the entry depends on this article's row (and its
    # author, category and tags), not on every write to the articles table.
    return get_object_or_404(queryset.prefetch_related("tags").cache(), slug=slug)


def _count_view(article: Article) -> None:
    # Atomic increment in the database: no read-modify-write race between workers.
    # In a table of its own: counting a view must not invalidate the cached article.
    if not ArticleStats.objects.filter(article=article).update(views=F("views") + 1):
        ArticleStats.objects.get_or_create(article=article)
        ArticleStats.objects.filter(article=article).update(views=F("views") + 1)


@require_safe
def article_detail(request: HttpRequest, slug: str) -> HttpResponse:
    article = _get_published_article(slug)
    _count_view(article)
    initial = {"author_name": request.user.get_username()} if request.user.is_authenticated else {}
    return _render_detail(request, article, CommentForm(initial=initial))


@ratelimit(key="user_or_ip", rate=demo_rate("comment"), method="POST")
@require_POST
def article_comment(request: HttpRequest, slug: str) -> HttpResponse:
    """Create a comment (CSRF-protected POST), then POST/redirect/GET back to the article."""
    article = _get_published_article(slug)
    form = CommentForm(request.POST)
    if not form.is_valid():
        return _render_detail(request, article, form, status=400)
    comment = form.save(commit=False)
    comment.article = article
    comment.save()
    messages.success(request, "Thanks, your comment has been posted.")
    return HttpResponseRedirect(f"{article.get_absolute_url()}#comment-{comment.pk}", status=303)


@ratelimit(key="user_or_ip", rate=demo_rate("search"))
@require_safe
def search(request: HttpRequest) -> HttpResponse:
    """Title search (``icontains``), at most ``SEARCH_LIMIT`` results, two queries."""
    query = request.GET.get("q", "").strip()[:SEARCH_MAX_QUERY_LENGTH]
    results: list[Article] = []
    if query:
        matches = (
            Article.objects.published().filter(title__icontains=query).newest_first().for_listing()
        )
        results = with_comment_counts(matches[:SEARCH_LIMIT])
    return render(
        request,
        "news/search.html",
        {"query": query, "results": results, "limit": SEARCH_LIMIT},
    )


def _commenter(request: HttpRequest) -> str:
    # As long as the form lets a name be (CommentForm's max_length).
    return request.GET.get("author", "").strip()[:80]


def _render_comments_by(
    request: HttpRequest, author: str, comments: list[Any], *, naive: bool
) -> HttpResponse:
    return render(
        request,
        "news/comments_by.html",
        {"author": author, "comments": comments, "naive": naive, "limit": COMMENTS_BY_LIMIT},
    )


@require_safe
def comments_by(request: HttpRequest) -> HttpResponse:
    """A commenter's latest approved comments (``?author=<name>``), newest first: one query.

    ``Comment``'s partial index on (author_name, created_at) for approved comments
    (migration 0004) serves it: the database reads the commenter's newest rows off
    the index, with no scan of the table and no sort. Not cached: this page shows
    what an index does to the query itself.
    """
    author = _commenter(request)
    comments: list[Any] = []
    if author:
        latest = Comment.objects.filter(
            author_name=author, is_approved=True, article__is_published=True
        ).order_by("-created_at")
        comments = list(latest.select_related("article")[:COMMENTS_BY_LIMIT])
    return _render_comments_by(request, author, comments, naive=False)


@require_safe
def comments_by_naive(request: HttpRequest) -> HttpResponse:
    """DELIBERATELY UNINDEXED copy of :func:`comments_by` -- a missing index on purpose.

    The same query on ``UnindexedComment``, the same rows without the index: the
    database reads the whole table for one commenter's rows, then sorts them for
    the LIMIT. perfkit's index advisor names the index that ``Comment`` has;
    keep this one without it.
    """
    author = _commenter(request)
    comments: list[Any] = []
    if author:
        latest = UnindexedComment.objects.filter(
            author_name=author, is_approved=True, article__is_published=True
        ).order_by("-created_at")
        comments = list(latest.select_related("article")[:COMMENTS_BY_LIMIT])
    return _render_comments_by(request, author, comments, naive=True)


@never_cache
@require_safe
def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness probe: no database, no cache."""
    return HttpResponse("ok", content_type="text/plain")


# --- JSON API ---------------------------------------------------------------------------


class _APIError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _api_queryset(request: HttpRequest) -> ArticleQuerySet:
    queryset = Article.objects.published().newest_first()
    category = request.GET.get("category", "").strip()
    if category:
        queryset = queryset.filter(category__slug=category)
    return queryset


def _api_page(request: HttpRequest, count: int) -> tuple[int, int]:
    """(page, num_pages) for ``?page=``; 400 if it is not a number, 404 if out of range."""
    num_pages = max(1, ceil(count / PAGE_SIZE))
    raw = request.GET.get("page", "").strip() or "1"
    try:
        page = int(raw)
    except ValueError:
        raise _APIError(400, "page must be a positive integer") from None
    if not 1 <= page <= num_pages:
        raise _APIError(404, f"page {page} out of range 1..{num_pages}")
    return page, num_pages


def _page_url(request: HttpRequest, page: int) -> str:
    params = request.GET.copy()
    params["page"] = str(page)
    return request.build_absolute_uri(f"{request.path}?{params.urlencode()}")


def _article_json(request: HttpRequest, article: Article, comment_count: int) -> dict[str, Any]:
    return {
        "id": article.pk,
        "title": article.title,
        "slug": article.slug,
        "url": request.build_absolute_uri(article.get_absolute_url()),
        "category": {"slug": article.category.slug, "name": article.category.name},
        "author": {"id": article.author.pk, "name": article.author.name},
        "tags": [{"slug": tag.slug, "name": tag.name} for tag in article.tags.all()],
        "comment_count": comment_count,
        "published_at": article.published_at.isoformat(),
    }


def _api_payload(
    request: HttpRequest, count: int, page: int, num_pages: int, results: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "count": count,
        "page": page,
        "num_pages": num_pages,
        "page_size": PAGE_SIZE,
        "next": _page_url(request, page + 1) if page < num_pages else None,
        "previous": _page_url(request, page - 1) if page > 1 else None,
        "results": results,
    }


def _error(exc: _APIError) -> JsonResponse:
    return JsonResponse({"error": exc.message}, status=exc.status)


@ratelimit(key="user_or_ip", rate=demo_rate("api"), group="news.api")
@require_safe
def api_articles(request: HttpRequest) -> JsonResponse:
    """JSON article list (``?page=``, ``?category=<slug>``): three queries per page, cached."""
    queryset = _api_queryset(request).cache()
    count = queryset.count()
    try:
        page, num_pages = _api_page(request, count)
    except _APIError as exc:
        return _error(exc)
    start = (page - 1) * PAGE_SIZE
    articles = with_comment_counts(queryset.for_listing()[start : start + PAGE_SIZE])
    results = [_article_json(request, a, a.comment_count) for a in articles]
    return JsonResponse(_api_payload(request, count, page, num_pages, results))


@require_safe
def api_articles_naive(request: HttpRequest) -> JsonResponse:
    """DELIBERATELY NAIVE copy of :func:`api_articles` -- an N+1 on purpose.

    Author, category, tags and the comment count are each fetched per article
    (2 + 4 x rows queries). Same JSON as the optimised endpoint.
    """
    queryset = _api_queryset(request)
    count = queryset.count()
    try:
        page, num_pages = _api_page(request, count)
    except _APIError as exc:
        return _error(exc)
    start = (page - 1) * PAGE_SIZE
    articles = list(queryset[start : start + PAGE_SIZE])
    results = [_article_json(request, a, a.comments.count()) for a in articles]
    return JsonResponse(_api_payload(request, count, page, num_pages, results))


@ratelimit(key="user_or_ip", rate=demo_rate("api"), group="news.api")
@require_safe
async def api_articles_async(request: HttpRequest) -> JsonResponse:
    """``async def`` twin of :func:`api_articles`, using the async ORM; same JSON.

    Cached like it; a hit is answered on the event loop (``redis.asyncio``), only a
    miss runs its queries in a thread.
    """
    queryset = _api_queryset(request).cache()
    count = await queryset.acount()
    try:
        page, num_pages = _api_page(request, count)
    except _APIError as exc:
        return _error(exc)
    start = (page - 1) * PAGE_SIZE
    # Async iteration runs the prefetch_related("tags") lookup too (Django >= 5.0).
    articles = [a async for a in queryset.for_listing()[start : start + PAGE_SIZE]]
    articles = await awith_comment_counts(articles)
    results = [_article_json(request, a, a.comment_count) for a in articles]
    return JsonResponse(_api_payload(request, count, page, num_pages, results))
