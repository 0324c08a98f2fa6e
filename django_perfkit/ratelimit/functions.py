"""django-ratelimit's functions (``get_usage``, ``is_ratelimited``) plus ``peek`` and ``reset``."""

from __future__ import annotations

import functools
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from django_ratelimit import ALL

from django_perfkit.ratelimit.core import InvalidLimit, Limit, Usage

__all__ = ["aget_usage", "get_usage", "is_ratelimited", "peek", "reset"]


def _limit(
    group: str | None, fn: Any, key: Any, rate: Any, method: Any, algorithm: str | None,
    cost: int, fail: str | None,
) -> Limit:  # fmt: skip
    if group is None and fn is None:
        raise ImproperlyConfigured("get_usage() needs a group or a fn, as in django-ratelimit")
    if group is None:
        group = f"{fn.__module__}.{fn.__qualname__}"
    if isinstance(method, list):
        method = tuple(method)
    try:
        return _cached_limit(group, key, rate, method, algorithm, cost, fail)
    except TypeError:  # an unhashable argument: build it every time
        return _build(group, key, rate, method, algorithm, cost, fail)


def _build(
    group: str, key: Any, rate: Any, method: Any, algorithm: str | None, cost: int,
    fail: str | None,
) -> Limit:  # fmt: skip
    try:
        return Limit.build(group, key, rate, method, algorithm, cost, fail)
    except InvalidLimit as exc:
        raise ImproperlyConfigured(f"rate limit {group}: {exc}") from exc


# The functions are called per request with the same arguments: validating and
# resolving them (key lookup, rate parsing) once per distinct call saves
# microseconds on every check.
_cached_limit = functools.lru_cache(maxsize=1024)(_build)


def get_usage(
    request: HttpRequest,
    group: str | None = None,
    fn: Any = None,
    key: Any = None,
    rate: Any = None,
    method: Any = ALL,
    increment: bool = False,
    *,
    algorithm: str | None = None,
    cost: int = 1,
    fail: str | None = None,
) -> Usage | None:
    """The usage dict (``count``, ``limit``, ``should_limit``, ``time_left``, ...), or None."""
    limit = _limit(group, fn, key, rate, method, algorithm, cost, fail)
    return limit.usage(request, increment=increment)


async def aget_usage(
    request: HttpRequest,
    group: str | None = None,
    fn: Any = None,
    key: Any = None,
    rate: Any = None,
    method: Any = ALL,
    increment: bool = False,
    *,
    algorithm: str | None = None,
    cost: int = 1,
    fail: str | None = None,
) -> Usage | None:
    """:func:`get_usage` for async code, on the ``redis.asyncio`` client."""
    limit = _limit(group, fn, key, rate, method, algorithm, cost, fail)
    return await limit.ausage(request, increment=increment)


def is_ratelimited(
    request: HttpRequest,
    group: str | None = None,
    fn: Any = None,
    key: Any = None,
    rate: Any = None,
    method: Any = ALL,
    increment: bool = False,
    **extra: Any,
) -> bool:
    """True when the request is over the limit (counting it with ``increment=True``)."""
    usage = get_usage(request, group, fn, key, rate, method, increment, **extra)
    return bool(usage and usage["should_limit"])


def peek(request: HttpRequest, group: str | None = None, **kwargs: Any) -> Usage | None:
    """The usage this request would see, without counting it."""
    kwargs["increment"] = False
    return get_usage(request, group, **kwargs)


def reset(
    request: HttpRequest,
    group: str | None = None,
    key: Any = None,
    rate: Any = None,
    method: Any = ALL,
    *,
    fn: Any = None,
    algorithm: str | None = None,
) -> bool:
    """Forget the client's count for one limit (the same arguments that declared it)."""
    limit = _limit(group, fn, key, rate, method, algorithm, 1, None)
    return limit.reset(request)
