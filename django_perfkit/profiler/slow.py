"""Slow requests: one structured log line each, and the latest kept in Redis.

A request that took at least ``PROFILER["SLOW_REQUEST_MS"]`` (1,000 by
default; 0 turns this off) is reported by :func:`report_slow_request`, a
reporter: a ``WARNING`` on the ``django_perfkit.slow`` logger whose message
is one JSON object (and the same dict as ``extra={"perfkit": ...}``), and the
same summary pushed onto a Redis list trimmed to ``SLOW_KEEP`` entries, for
the panel (:func:`recent_slow_requests`). The summary carries numbers, the
route, query shapes and call sites; never SQL parameters. A request that is
not slow costs one comparison.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any

from django.http import HttpRequest

from django_perfkit.conf import get_settings
from django_perfkit.profiler.sampling import note_slow
from django_perfkit.queries.fingerprint import fingerprint
from django_perfkit.queries.guard import NPlusOne
from django_perfkit.record import RequestRecord
from django_perfkit.redis import get_gateway

__all__ = [
    "recent_slow_requests",
    "report_slow_request",
    "slow_request_count",
    "summarise",
    "summarise_finding",
]

logger = logging.getLogger("django_perfkit.slow")

#: Queries listed per slow request, slowest first.
SLOWEST_QUERIES = 5


def summarise_finding(finding: NPlusOne) -> dict[str, Any]:
    """One N+1 finding as a JSON-able dict (slow-request records, the toolbar panel)."""
    return {
        "relation": finding.relation,
        "count": finding.count,
        "time_ms": round(finding.time_ms, 3),
        "sql": finding.fingerprint,
        "location": finding.location,
        "suggestion": finding.suggestion,
    }


def summarise(record: RequestRecord) -> dict[str, Any]:
    """The record as a JSON-able dict (what the log line and the panel show)."""
    db, cache = record.db, record.cache
    slowest = sorted(db.queries, key=lambda q: q.duration, reverse=True)[:SLOWEST_QUERIES]
    return {
        "at": round(record.started_at, 3),
        "method": record.method,
        "path": record.path,
        "route": record.route,
        "status": record.status,
        "duration_ms": round(record.duration * 1000, 3),
        "db": {
            "count": db.count,
            "time_ms": round(db.time * 1000, 3),
            "duplicates": db.duplicates,
        },
        "cache": {
            "hits": cache.hits,
            "misses": cache.misses,
            "time_ms": round(cache.time * 1000, 3),
        },
        "sections": {
            label: round(section.time * 1000, 3) for label, section in record.sections.items()
        },
        "ratelimited": any(decision.limited for decision in record.ratelimits),
        "nplusone": [summarise_finding(finding) for finding in record.nplusone],
        "index_advice": [advice.suggestion for advice in record.index_advice],
        "profile_id": record.profile_id,
        "slowest_queries": [
            {
                "sql": fingerprint(query.sql),
                "ms": round(query.duration * 1000, 3),
                "alias": query.alias,
                "at": query.call_site,
            }
            for query in slowest
        ],
    }


def report_slow_request(record: RequestRecord, request: HttpRequest, response: Any) -> None:
    """The reporter: log and keep the request if it was slow."""
    conf = get_settings().profiler
    if not conf.slow_request_ms or record.duration * 1000 < conf.slow_request_ms:
        return
    note_slow(record.route)
    summary = summarise(record)
    line = json.dumps(summary, separators=(",", ":"), default=str)
    logger.warning(line, extra={"perfkit": summary})
    if not conf.slow_keep:
        return
    gateway = get_gateway()
    if not gateway.configured:
        return
    key = gateway.key("slow", "requests")

    def keep(client: Any) -> None:
        pipe = client.pipeline(transaction=False)
        pipe.lpush(key, line)
        pipe.ltrim(key, 0, conf.slow_keep - 1)
        pipe.expire(key, 7 * 86400)
        pipe.execute()

    if _on_event_loop():
        # Under ASGI the reporter runs on the event loop: a slow or black-holed
        # Redis must not stall every other request on it.
        threading.Thread(target=gateway.run, args=(keep, None), daemon=True).start()
    else:
        gateway.run(keep, None)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def recent_slow_requests(limit: int = 50) -> list[dict[str, Any]]:
    """The latest slow requests of the whole fleet, newest first (empty without Redis)."""
    gateway = get_gateway()
    key = gateway.key("slow", "requests")
    raw: list[Any] = gateway.run(lambda client: client.lrange(key, 0, max(0, limit - 1)), [])
    found = []
    for item in raw:
        try:
            found.append(json.loads(item))
        except ValueError:
            continue
    return found


def slow_request_count() -> int:
    """How many slow requests are kept (0 without Redis)."""
    gateway = get_gateway()
    key = gateway.key("slow", "requests")
    return int(gateway.run(lambda client: client.llen(key), 0))
