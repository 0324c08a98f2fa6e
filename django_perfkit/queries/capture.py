"""``capture()``: the queries a block of code ran, as a report.

It opens a request record of its own (the one collectors write to), so it
sees every query on every alias and thread that the query collector sees,
counted by perfkit's own counter: unlike Django's query log
(``CaptureQueriesContext``, ``assertNumQueries``), which keeps at most 9,000
queries and then silently stops counting, the count is right at any size.
When the block runs inside a request (or another capture), its queries are
added to the outer record too, so Server-Timing and the outer report still
see them.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from django.core.exceptions import ImproperlyConfigured

from django_perfkit.conf import get_settings
from django_perfkit.queries.fingerprint import fingerprint
from django_perfkit.queries.guard import Guard, NPlusOne, UnusedPrefetch
from django_perfkit.queries.indexes import IndexAdvice
from django_perfkit.record import QueryRecord, RequestRecord, _current

__all__ = ["QueryReport", "capture"]


class QueryReport:
    """What :func:`capture` saw. Read it after the block (it fills while the block runs)."""

    def __init__(self, record: RequestRecord) -> None:
        self._record = record

    @property
    def count(self) -> int:
        """Every query, however many (not capped like Django's query log)."""
        return self._record.db.count

    @property
    def time_ms(self) -> float:
        return self._record.db.time * 1000

    @property
    def duplicates(self) -> int:
        """Queries that repeat an earlier one exactly: same SQL, alias and parameters."""
        return self._record.db.duplicates

    @property
    def queries(self) -> list[QueryRecord]:
        """The first ``MAX_QUERIES_RECORDED`` queries in detail (see :attr:`dropped`)."""
        return self._record.db.queries

    @property
    def nplusone(self) -> list[NPlusOne]:
        """N+1 findings: each names the relation or query shape, where, and the fix."""
        return self._record.nplusone

    @property
    def unused_prefetches(self) -> list[UnusedPrefetch]:
        """``prefetch_related()`` lookups whose results were never read."""
        return self._record.unused_prefetches

    @property
    def index_advice(self) -> list[IndexAdvice]:
        """Indexes that would serve queries the plans answer with sequential scans."""
        return self._record.index_advice

    @property
    def dropped(self) -> int:
        """Queries counted but not kept in detail (beyond ``MAX_QUERIES_RECORDED``)."""
        return self._record.db.dropped

    def fingerprints(self) -> Counter[str]:
        """How often each query shape ran (of the queries kept in detail)."""
        return Counter(fingerprint(query.sql) for query in self.queries)

    def __str__(self) -> str:
        lines = [
            f"{self.count} queries in {self.time_ms:.1f} ms, {self.duplicates} exact duplicates"
        ]
        sites: dict[str, str | None] = {}
        for query in self.queries:
            sites.setdefault(fingerprint(query.sql), query.call_site)
        for shape, times in self.fingerprints().most_common(10):
            where = sites.get(shape)
            lines.append(f"  {times} x {shape}" + (f"\n      at {where}" if where else ""))
        if self.dropped:
            lines.append(f"  (and {self.dropped} more not kept in detail)")
        for finding in self.nplusone:
            lines.append(textwrap.indent(str(finding), "  "))
        for unused in self.unused_prefetches:
            lines.append(f"  {unused}")
        for advice in self.index_advice:
            lines.append(textwrap.indent(str(advice), "  "))
        return "\n".join(lines)


@contextmanager
def capture(
    *, nplusone: bool = True, threshold: int | None = None, explain: bool = False
) -> Iterator[QueryReport]:
    """Collect the queries of a block, and find its N+1s::

        with capture() as report:
            client.get("/articles/")
        assert report.count <= 4, report
        assert not report.nplusone, report

    ``nplusone=False`` only counts (no stack walk per query, no QuerySet
    wrapping). ``threshold`` overrides ``QUERY_GUARD["NPLUSONE_THRESHOLD"]``:
    how many repeats make a finding (at least 2). ``explain=True`` runs the
    index advisor on every ``SELECT`` shape (on PostgreSQL), not only the
    slow ones: ``report.index_advice``.

    Needs the query collector (``PERFKIT["COLLECT_QUERIES"]``, on by default)
    and ``django_perfkit`` in ``INSTALLED_APPS`` (which installs it).
    """
    settings = get_settings()
    if not settings.enabled or not settings.collect_queries:
        raise ImproperlyConfigured(
            'perfkit capture() needs the query collector: set PERFKIT["ENABLED"] and '
            'PERFKIT["COLLECT_QUERIES"] to True (the defaults).'
        )
    outer = _current.get()
    record = RequestRecord()
    record.explain = explain
    if nplusone:
        limit = settings.query_guard.nplusone_threshold if threshold is None else threshold
        record.guard = Guard(limit).open()
    token = _current.set(record)
    try:
        yield QueryReport(record)
    finally:
        _current.reset(token)
        record.finish()
        if record.guard is not None:
            record.guard.close(record)
            record.guard = None
        if outer is not None:
            outer.absorb(record, settings.max_queries_recorded)
        else:
            record.run_after_response()
