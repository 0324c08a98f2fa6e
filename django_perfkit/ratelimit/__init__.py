"""Rate limits on Redis: ``@ratelimit``, a drop-in superset of django-ratelimit.

Change ``from django_ratelimit.decorators import ratelimit`` to
``from django_perfkit import ratelimit`` and existing code keeps working, now
with a sliding window, one Redis round trip per check, 429 with
``Retry-After`` and RateLimit headers, async views, trusted proxies, and a
failure policy that holds when Redis is down.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from django_ratelimit import ALL, UNSAFE

from django_perfkit.ratelimit.core import Limit, Usage
from django_perfkit.ratelimit.decorators import Ratelimited, ratelimit
from django_perfkit.ratelimit.functions import aget_usage, get_usage, is_ratelimited, peek, reset

__all__ = [
    "ALL",
    "UNSAFE",
    "Limit",
    "PerfkitThrottle",
    "Ratelimited",
    "Usage",
    "aget_usage",
    "get_usage",
    "is_ratelimited",
    "peek",
    "ratelimit",
    "reset",
]


def __getattr__(name: str) -> Any:
    # DRF is optional: its throttle class is imported only when asked for.
    if name == "PerfkitThrottle":
        from django_perfkit.ratelimit.drf import PerfkitThrottle

        return PerfkitThrottle
    raise AttributeError(f"module 'django_perfkit.ratelimit' has no attribute {name!r}")


class _CallableModule(types.ModuleType):
    """``from django_perfkit import ratelimit`` must give the decorator, as
    django-ratelimit's import did, while ``django_perfkit.ratelimit`` is also
    this package (home of ``PerfkitThrottle``, ``get_usage``, ...). Python sets
    the submodule as the package's attribute once it is imported, so the
    module itself is made callable: calling it is calling :func:`ratelimit`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return ratelimit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
