"""The on-write functions of the benchmark: the same value over two comment tables."""

from __future__ import annotations

from typing import Any

from django_perfkit.cache import cached_on_write

from .models import DeferredComment, SyncComment


def _stats(model: Any, article_id: int) -> dict[str, Any]:
    rows = model.objects.filter(article_id=article_id)
    latest = list(rows.order_by("-pk").values_list("author_name", flat=True)[:3])
    return {"count": rows.count(), "latest": latest}


@cached_on_write(depends_on={SyncComment: lambda c: {"article_id": c.article_id}})
def sync_stats(article_id: int) -> dict[str, Any]:
    return _stats(SyncComment, article_id)


@cached_on_write(depends_on={DeferredComment: lambda c: {"article_id": c.article_id}}, defer=True)
def deferred_stats(article_id: int) -> dict[str, Any]:
    return _stats(DeferredComment, article_id)
