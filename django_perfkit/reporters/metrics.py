"""The numbers perfkit puts on a tracer's request span (Datadog, OpenTelemetry).

One list, so both tracers carry the same names and meanings.
"""

from __future__ import annotations

from django_perfkit.conf import get_settings
from django_perfkit.record import RequestRecord

__all__ = ["span_metrics"]


def span_metrics(record: RequestRecord) -> dict[str, int | float]:
    """``perfkit.db.count``, ``.db.duplicates``, ``.db.time_ms``, ``.cache.hits``,
    ``.cache.misses``, ``.nplusone.count``, ``.ratelimited`` and ``.slow`` (0 or 1)."""
    db, cache = record.db, record.cache
    slow_ms = get_settings().profiler.slow_request_ms
    return {
        "perfkit.db.count": db.count,
        "perfkit.db.duplicates": db.duplicates,
        "perfkit.db.time_ms": round(db.time * 1000, 3),
        "perfkit.cache.hits": cache.hits,
        "perfkit.cache.misses": cache.misses,
        "perfkit.nplusone.count": len(record.nplusone),
        "perfkit.ratelimited": int(any(d.limited for d in record.ratelimits)),
        "perfkit.slow": int(bool(slow_ms) and record.duration * 1000 >= slow_ms),
    }
