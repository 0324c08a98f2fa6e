"""The query guard: what a block of code or a request asked the database.

Today: :func:`capture` (a report of the queries a block ran: count, time,
exact duplicates, query shapes with their call sites), :func:`fingerprint`
(the shape of a query, stable across runs) and the pytest plugin's query
budget (:mod:`.pytest_plugin`). N+1 detection, per-view budgets and budget
files are still to come (see the docs).
"""

from __future__ import annotations

from django_perfkit.queries.capture import QueryReport, capture
from django_perfkit.queries.fingerprint import fingerprint

__all__ = ["QueryReport", "capture", "fingerprint"]
