"""Articles and three identical comment tables, one per write-path configuration.

``PlainComment`` has no ``@cached_on_write`` function (the cost of an insert
with perfkit's write watcher only), ``SyncComment`` one recomputed at commit,
``DeferredComment`` one with ``defer=True``: the insert costs compare without
one function's receivers running for the other's table.
"""

from __future__ import annotations

from django.db import models


class Article(models.Model):
    title = models.CharField(max_length=100)

    class Meta:
        app_label = "onwriteapp"


class _Comment(models.Model):
    article = models.ForeignKey(Article, on_delete=models.CASCADE, related_name="+")
    author_name = models.CharField(max_length=50)
    body = models.CharField(max_length=200)

    class Meta:
        abstract = True
        app_label = "onwriteapp"


class PlainComment(_Comment):
    class Meta:
        app_label = "onwriteapp"


class SyncComment(_Comment):
    class Meta:
        app_label = "onwriteapp"


class DeferredComment(_Comment):
    class Meta:
        app_label = "onwriteapp"
