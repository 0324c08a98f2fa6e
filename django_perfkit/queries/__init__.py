"""The query guard: what a block of code or a request asked the database.

Today: :func:`capture` (a report of the queries a block ran: count, time,
exact duplicates, query shapes with their call sites) and :func:`fingerprint`
(the shape of a query, stable across runs). N+1 detection, per-view budgets
and the pytest plugin are still to come (see the docs).
"""

from __future__ import annotations

from django_perfkit.queries.capture import QueryReport, capture
from django_perfkit.queries.fingerprint import fingerprint

__all__ = ["QueryReport", "capture", "fingerprint"]
