"""django-perfkit: performance tooling for Django sites under real traffic.

The public API is re-exported here. Importing this package reads no settings
and imports nothing heavy: each name is imported on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

__all__ = [
    "CachedManager",
    "CachedQuerySet",
    "CachedQuerySetMixin",
    "NPlusOneDetected",
    "OnWriteFunction",
    "PerfkitMiddleware",
    "QueryBudgetExceeded",
    "RequestRecord",
    "__version__",
    "ainvalidate",
    "ainvalidate_all",
    "cached_fragment",
    "cached_on_write",
    "current_record",
    "flush_deferred",
    "get_gateway",
    "invalidate",
    "invalidate_all",
    "query_budget",
    "ratelimit",
    "record_request",
    "timer",
]

_LAZY = {
    "CachedManager": "django_perfkit.cache",
    "CachedQuerySet": "django_perfkit.cache",
    "CachedQuerySetMixin": "django_perfkit.cache",
    "ainvalidate": "django_perfkit.cache",
    "ainvalidate_all": "django_perfkit.cache",
    "cached_fragment": "django_perfkit.cache",
    "cached_on_write": "django_perfkit.cache",
    "flush_deferred": "django_perfkit.cache",
    "OnWriteFunction": "django_perfkit.cache",
    "invalidate": "django_perfkit.cache",
    "invalidate_all": "django_perfkit.cache",
    "PerfkitMiddleware": "django_perfkit.middleware",
    "NPlusOneDetected": "django_perfkit.queries",
    "QueryBudgetExceeded": "django_perfkit.queries",
    "query_budget": "django_perfkit.queries",
    "RequestRecord": "django_perfkit.record",
    "current_record": "django_perfkit.record",
    "record_request": "django_perfkit.record",
    "timer": "django_perfkit.record",
    "get_gateway": "django_perfkit.redis",
}

if TYPE_CHECKING:
    from django_perfkit.cache import (
        CachedManager,
        CachedQuerySet,
        CachedQuerySetMixin,
        OnWriteFunction,
        ainvalidate,
        ainvalidate_all,
        cached_fragment,
        cached_on_write,
        flush_deferred,
        invalidate,
        invalidate_all,
    )
    from django_perfkit.middleware import PerfkitMiddleware
    from django_perfkit.queries import (
        NPlusOneDetected,
        QueryBudgetExceeded,
        query_budget,
    )
    from django_perfkit.ratelimit.decorators import ratelimit
    from django_perfkit.record import RequestRecord, current_record, record_request, timer
    from django_perfkit.redis import get_gateway


def __getattr__(name: str) -> Any:
    if name == "ratelimit":
        # The django_perfkit.ratelimit package, which is callable as the
        # decorator (see its _CallableModule).
        import importlib

        return importlib.import_module("django_perfkit.ratelimit")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'django_perfkit' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
