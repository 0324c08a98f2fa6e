"""The query guard: what a block of code or a request asked the database.

* :func:`capture`: a report of the queries a block ran (count, time, exact
  duplicates, query shapes with their call sites) and its N+1 findings;
* :class:`query_budget`: a budget on a view or a block, acted on per
  ``QUERY_GUARD["MODE"]``;
* :func:`fingerprint`: the shape of a query, stable across runs;
* the pytest plugin (:mod:`.pytest_plugin`): budgets on tests and a budgets
  file for CI.
"""

from __future__ import annotations

from django_perfkit.queries.budget import (
    NPlusOneDetected,
    QueryBudgetExceeded,
    QueryGuardError,
    query_budget,
    unmatched_allowlist_entries,
)
from django_perfkit.queries.capture import QueryReport, capture
from django_perfkit.queries.fingerprint import fingerprint
from django_perfkit.queries.guard import NPlusOne, UnusedPrefetch
from django_perfkit.queries.indexes import IndexAdvice

__all__ = [
    "IndexAdvice",
    "NPlusOne",
    "NPlusOneDetected",
    "QueryBudgetExceeded",
    "QueryGuardError",
    "QueryReport",
    "UnusedPrefetch",
    "capture",
    "fingerprint",
    "query_budget",
    "unmatched_allowlist_entries",
]
