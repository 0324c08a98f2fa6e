"""Cache on write: ``@cached_on_write`` functions, recomputed when their data changes.

:mod:`.function` holds the decorated function (reads, refresh, invalidate),
:mod:`.registry` the signal receivers that turn writes into refreshes, and
:mod:`.deferred` the background worker of ``defer=True``. Entries and version
tokens are the ones of ``.cache()`` (:mod:`django_perfkit.cache.entries`,
:mod:`django_perfkit.versions`).
"""

from __future__ import annotations

from django_perfkit.cache.onwrite.deferred import flush_deferred
from django_perfkit.cache.onwrite.function import OnWriteFunction, cached_on_write

__all__ = ["OnWriteFunction", "cached_on_write", "flush_deferred"]
