"""``@ratelimit``: django-ratelimit's decorator, plus algorithm, cost, fail and headers."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from django_ratelimit import ALL, UNSAFE
from django_ratelimit.exceptions import Ratelimited as DjangoRatelimited

from django_perfkit.conf import get_settings
from django_perfkit.ratelimit.core import InvalidLimit, Limit, Usage
from django_perfkit.ratelimit.responses import add_headers

__all__ = ["Ratelimited", "ratelimit"]


class Ratelimited(DjangoRatelimited):  # type: ignore[misc]
    """Raised by a blocking limit. A subclass of django-ratelimit's ``Ratelimited``
    (itself a ``PermissionDenied``), so existing handlers keep working;
    ``PerfkitMiddleware`` turns it into a 429 with headers."""

    def __init__(self, usage: Usage | None = None) -> None:
        super().__init__("rate limited")
        self.usage = usage


def _note(request: HttpRequest, usage: Usage | None) -> bool:
    limited = usage is not None and usage["should_limit"]
    # As django-ratelimit: once any limit said yes, request.limited stays True.
    request.limited = limited or getattr(request, "limited", False)  # type: ignore[attr-defined]
    if usage is not None:
        request.ratelimit = usage  # type: ignore[attr-defined]
    return limited


def _maybe_headers(response: Any, usage: Usage | None, headers: bool | None) -> None:
    if usage is None or response is None:
        return
    wanted = get_settings().ratelimit_headers if headers is None else headers
    if wanted and hasattr(response, "__setitem__"):
        add_headers(response, usage)


def ratelimit(
    group: str | None = None,
    key: Any = None,
    rate: Any = None,
    method: Any = ALL,
    block: bool = True,
    *,
    algorithm: str | None = None,
    cost: int = 1,
    fail: str | None = None,
    headers: bool | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Limit a view. Same arguments and meaning as django-ratelimit's decorator.

    Keyword-only extras: ``algorithm`` (``"sliding"``, ``"gcra"``, ``"fixed"``;
    default ``PERFKIT["RATELIMIT_ALGORITHM"]``), ``cost`` (what one request
    counts for), ``fail`` (``"open"`` or ``"closed"`` when Redis cannot be
    asked), ``headers`` (RateLimit headers on allowed responses too).
    Works on sync and async views, and on class-based views with
    ``method_decorator``. A bad argument raises ``ImproperlyConfigured`` here,
    at import time, naming the view.
    """

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
        try:
            limit = Limit.build(group or name, key, rate, method, algorithm, cost, fail)
        except InvalidLimit as exc:
            raise ImproperlyConfigured(f"@ratelimit on {name}: {exc}") from exc

        if iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                usage = await limit.ausage(request, increment=True)
                if _note(request, usage) and block:
                    raise Ratelimited(usage)
                response = await fn(request, *args, **kwargs)
                _maybe_headers(response, usage, headers)
                return response

            return async_wrapped

        @functools.wraps(fn)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            usage = limit.usage(request, increment=True)
            if _note(request, usage) and block:
                raise Ratelimited(usage)
            response = fn(request, *args, **kwargs)
            _maybe_headers(response, usage, headers)
            return response

        return wrapped

    return decorator


# As django-ratelimit's decorator: ratelimit.ALL and ratelimit.UNSAFE.
ratelimit.ALL = ALL  # type: ignore[attr-defined]
ratelimit.UNSAFE = UNSAFE  # type: ignore[attr-defined]
