"""Redis caches invalidated by version tokens: ``.cache()``, ``@cached_on_write``, fragments.

``Article.objects.filter(category=c).select_related("author").cache()`` serves
the result from Redis until a write changes what it read (computed on read,
:mod:`django_perfkit.cache.queryset`). A ``@cached_on_write`` function is
recomputed by the writes that change its data, so reads never compute
(:mod:`django_perfkit.cache.onwrite`). A rendered template fragment can be
cached under the tokens of the querysets it shows
(:mod:`django_perfkit.cache.fragments`, ``{% cached_as %}``).
:mod:`django_perfkit.versions` is how writes are seen, for all three.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings
from django.db import models

from django_perfkit.cache.fragments import cached_fragment
from django_perfkit.cache.onwrite import OnWriteFunction, cached_on_write, flush_deferred
from django_perfkit.cache.queryset import CachedManager, CachedQuerySet, CachedQuerySetMixin
from django_perfkit.versions.tokens import abump, bump, tokens_for

__all__ = [
    "CachedManager",
    "CachedQuerySet",
    "CachedQuerySetMixin",
    "OnWriteFunction",
    "ainvalidate",
    "ainvalidate_all",
    "cached_fragment",
    "cached_on_write",
    "flush_deferred",
    "invalidate",
    "invalidate_all",
]


def _aliases(using: str | None) -> list[str]:
    return [using] if using is not None else list(django_settings.DATABASES)


def _model_keys(alias: str, target: type[models.Model] | models.Model) -> list[str]:
    tokens = tokens_for(alias)
    if isinstance(target, models.Model):
        meta = target._meta
        table = meta.db_table
        pk: Any = meta.pk
        keys = [
            tokens.scan(table),
            tokens.value(table, str(pk.column), target.pk),
            tokens.key("w", table),
        ]
        keys.extend(
            tokens.generation(table, str(f.column))
            for f in meta.concrete_fields
            if f.is_relation and (f.many_to_one or f.one_to_one)
        )
        return keys
    model: Any = target
    if isinstance(model, type) and issubclass(model, models.Model):
        table = model._meta.db_table
        return [tokens.table(table), tokens.key("w", table)]
    raise TypeError(f"invalidate() takes a model class or instance, not {target!r}")


def invalidate(target: type[models.Model] | models.Model, using: str | None = None) -> bool:
    """Drop cached results that read ``target``: a model (its whole table) or one instance.

    Also the ``@cached_on_write`` entries of functions that read its table
    (all of them: perfkit cannot tell which ones a write it did not see changed).

    For writes perfkit cannot see (another program writing the database, a
    stored procedure). ``using``: one database alias (default: all of them).
    Returns False when Redis could not be told; the cache of that alias is then
    not read until it can be (see "Redis outages" in the docs).
    """
    ok = True
    for alias in _aliases(using):
        ok = bump(alias, _model_keys(alias, target)) and ok
    return ok


async def ainvalidate(target: type[models.Model] | models.Model, using: str | None = None) -> bool:
    """The async form of :func:`invalidate`."""
    ok = True
    for alias in _aliases(using):
        ok = await abump(alias, _model_keys(alias, target)) and ok
    return ok


def invalidate_all(using: str | None = None) -> bool:
    """Drop every cached result (of one alias, or of all): bump the epoch."""
    ok = True
    for alias in _aliases(using):
        ok = bump(alias, [tokens_for(alias).epoch]) and ok
    return ok


async def ainvalidate_all(using: str | None = None) -> bool:
    """The async form of :func:`invalidate_all`."""
    ok = True
    for alias in _aliases(using):
        ok = await abump(alias, [tokens_for(alias).epoch]) and ok
    return ok


def watch_writes() -> None:
    """Start bumping version tokens on every write (idempotent): the cache is in use."""
    from django.db.models.signals import post_migrate

    from django_perfkit.versions import writes

    writes.install_everywhere()
    post_migrate.connect(_on_post_migrate, dispatch_uid="django_perfkit.cache.migrate")


def _on_post_migrate(using: str = "default", **kwargs: Any) -> None:
    # Migrations' DDL already bumps each table; data migrations that write
    # through a schema editor's raw SQL are covered too. The epoch bump makes
    # sure nothing computed against the old schema is unpickled afterwards.
    invalidate_all(using)
