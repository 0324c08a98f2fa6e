"""Categories, authors and items: 2,000 items in 20 categories.

The manager depends on the competitor (``BENCH_IMPL``): perfkit needs its
``CachedManager``; cacheops adds ``.cache()`` to every queryset; cachalot and
"none" use Django's own.
"""

from __future__ import annotations

import os

from django.db import models

if os.environ.get("BENCH_IMPL", "").startswith("perfkit"):
    from django_perfkit.cache import CachedManager as Manager
else:
    Manager = models.Manager


class Category(models.Model):
    name = models.CharField(max_length=50)
    objects = Manager()

    class Meta:
        app_label = "cacheapp"


class Author(models.Model):
    name = models.CharField(max_length=50)
    objects = Manager()

    class Meta:
        app_label = "cacheapp"


class Item(models.Model):
    category = models.ForeignKey(Category, on_delete=models.CASCADE)
    author = models.ForeignKey(Author, on_delete=models.CASCADE)
    title = models.CharField(max_length=100)
    body = models.CharField(max_length=200)
    n = models.IntegerField(default=0)
    objects = Manager()

    class Meta:
        app_label = "cacheapp"
        ordering = ["id"]
