"""Query budgets and what happens when one is exceeded or an N+1 is found.

The same rules serve three places: :class:`query_budget` (a view decorator
and a context manager), ``PerfkitMiddleware`` (every request, with
``QUERY_GUARD["MAX_QUERIES"]`` / ``["MAX_DUPLICATES"]`` when set) and the
pytest plugin. What happens is the mode:

* ``"log"``: one structured ``WARNING`` on the ``django_perfkit.queries``
  logger (the numbers are in the record ``extra={"perfkit": {...}}``);
* ``"warn"``: the same log line, and on a response the ``X-Perfkit-Queries``
  header (added by the middleware);
* ``"raise"``: :class:`QueryBudgetExceeded` or :class:`NPlusOneDetected`,
  whose message is the whole report;
* ``"off"``: nothing.

A finding acted on once is marked ``handled``, so a budget inside a request
and the middleware around it do not both log (or raise) it.
"""

from __future__ import annotations

import contextvars
import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fnmatch import fnmatchcase
from typing import Any, TypeVar

from asgiref.sync import iscoroutinefunction
from django.core.exceptions import ImproperlyConfigured

from django_perfkit.conf import QUERY_GUARD_MODES, get_settings
from django_perfkit.queries.capture import QueryReport, capture
from django_perfkit.queries.guard import NPlusOne, UnusedPrefetch

__all__ = [
    "NPlusOneDetected",
    "QueryBudgetExceeded",
    "QueryGuardError",
    "allowlist_matches",
    "enforce",
    "query_budget",
    "unmatched_allowlist_entries",
]

logger = logging.getLogger("django_perfkit.queries")

F = TypeVar("F", bound=Callable[..., Any])


class QueryGuardError(Exception):
    """A query budget was exceeded or an N+1 was found, in ``"raise"`` mode."""

    def __init__(self, message: str, report: QueryReport | None = None) -> None:
        super().__init__(message)
        #: The :class:`~django_perfkit.queries.QueryReport` of the scope.
        self.report = report


class QueryBudgetExceeded(QueryGuardError):
    """More queries (or exact duplicates) than the budget allows."""


class NPlusOneDetected(QueryGuardError):
    """An N+1: the same lazy load or query shape repeated from one place."""


# --- the allowlist ---------------------------------------------------------------

#: Allowlist entries (by index) that matched a finding in this process.
_matched: set[int] = set()


def allowlist_matches(finding: NPlusOne | UnusedPrefetch) -> bool:
    """Whether ``QUERY_GUARD["ALLOWLIST"]`` lets ``finding`` pass.

    An entry is a dict of shell-style patterns; every key it has must match:
    ``relation`` (``"news.Article.author"``), ``location`` (``"news/views.py:*"``,
    the place in project code), ``fingerprint`` (the query shape), ``model``.
    """
    entries = get_settings().query_guard.allowlist
    if not entries:
        return False
    if isinstance(finding, UnusedPrefetch):
        facts = {
            "relation": f"{finding.model}.{finding.lookup}",
            "model": finding.model,
            "location": finding.origin or "",
            "fingerprint": "",
        }
    else:
        facts = {
            "relation": finding.relation or "",
            "model": finding.model or "",
            "location": finding.location or "",
            "fingerprint": finding.fingerprint,
        }
    for index, entry in enumerate(entries):
        if all(fnmatchcase(facts.get(key, ""), pattern) for key, pattern in entry.items()):
            _matched.add(index)
            return True
    return False


def unmatched_allowlist_entries() -> list[dict[str, str]]:
    """The ``ALLOWLIST`` entries that matched nothing so far in this process.

    The pytest plugin prints them at the end of a run: an entry that matches
    nothing any more is a fixed N+1 whose exemption can go.
    """
    entries = get_settings().query_guard.allowlist
    return [entry for index, entry in enumerate(entries) if index not in _matched]


# --- acting on a scope ------------------------------------------------------------


def _problems(
    report: QueryReport, max_queries: int | None, max_duplicates: int | None
) -> tuple[list[str], list[NPlusOne], list[UnusedPrefetch]]:
    over = []
    if max_queries is not None and report.count > max_queries:
        over.append(f"{report.count} queries, budget {max_queries}")
    if max_duplicates is not None:
        duplicates = report.duplicates
        if duplicates > max_duplicates:
            over.append(f"{duplicates} exact duplicate queries, budget {max_duplicates}")
    findings = [f for f in report.nplusone if not f.handled and not allowlist_matches(f)]
    unused: list[UnusedPrefetch] = []
    if get_settings().query_guard.unused_prefetches:
        unused = [u for u in report.unused_prefetches if not u.handled and not allowlist_matches(u)]
    return over, findings, unused


def summary(report: QueryReport, findings: list[NPlusOne] | None = None) -> str:
    """One line: ``12 queries, 1 duplicate; N+1: news.Article.author x10 at news/views.py:30``."""
    found = report.nplusone if findings is None else findings
    text = f"{report.count} queries, {report.duplicates} duplicates"
    if found:
        parts = [
            f"{f.relation or f.model or 'raw SQL'} x{f.count}"
            + (f" at {f.location}" if f.location else "")
            for f in found
        ]
        text += f"; N+1: {'; '.join(parts)}"
    return text


def enforce(
    report: QueryReport,
    *,
    where: str,
    max_queries: int | None = None,
    max_duplicates: int | None = None,
    mode: str | None = None,
    nplusone: str | None = None,
) -> list[NPlusOne]:
    """Act on a closed scope: log, or raise, per mode. Returns the findings acted on.

    ``mode`` is for a budget overrun, ``nplusone`` for N+1 findings (unused
    prefetches are logged, never raised); both default to the configured
    ``QUERY_GUARD["MODE"]``.
    """
    default = get_settings().query_guard.effective_mode()
    budget_mode = mode or default
    finding_mode = nplusone or default
    over, findings, unused = _problems(report, max_queries, max_duplicates)
    if budget_mode == "off":
        over = []
    if finding_mode == "off":
        findings, unused = [], []
    for finding in findings:
        finding.handled = True
    for prefetch in unused:
        prefetch.handled = True
    if not (over or findings or unused):
        return []
    extra = {
        "perfkit": {
            "where": where,
            "queries": report.count,
            "duplicates": report.duplicates,
            "time_ms": round(report.time_ms, 3),
            "over_budget": over,
            "nplusone": [
                {
                    "relation": f.relation,
                    "fingerprint": f.fingerprint,
                    "count": f.count,
                    "location": f.location,
                    "origin": f.origin,
                    "suggestion": f.suggestion,
                }
                for f in findings
            ],
            "unused_prefetches": [f"{u.model}.{u.lookup}" for u in unused],
        }
    }
    lines = [f"perfkit query guard: {where}: {summary(report, findings)}"]
    lines += [f"  over budget: {item}" for item in over]
    lines += [f"  {f}".replace("\n", "\n  ") for f in findings]
    lines += [f"  {u}" for u in unused]
    message = "\n".join(lines)
    if over and budget_mode == "raise":
        raise QueryBudgetExceeded(f"{message}\n\n{report}", report)
    if findings and finding_mode == "raise":
        raise NPlusOneDetected(f"{message}\n\n{report}", report)
    logger.warning(message, extra=extra)
    return findings


# --- the decorator and context manager ----------------------------------------------


def _count(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ImproperlyConfigured(
            f"query_budget({name}={value!r}): {name} must be a whole number >= 0 or None, "
            f"e.g. query_budget({name}=10)"
        )
    return value


def _mode(name: str, value: Any) -> str | None:
    if value is not None and value not in QUERY_GUARD_MODES:
        raise ImproperlyConfigured(
            f"query_budget({name}={value!r}): write one of "
            + ", ".join(f'"{m}"' for m in QUERY_GUARD_MODES)
            + " (or leave it out to use QUERY_GUARD['MODE'])"
        )
    return value  # type: ignore[no-any-return]


class query_budget:
    """A query budget on a view (sync or async) or a block of code.

    ::

        @query_budget(max_queries=10, max_duplicates=0, nplusone="raise")
        def article_list(request): ...

        with query_budget(max_queries=3) as report:
            render_sidebar()

    ``max_queries`` / ``max_duplicates``: ``None`` means no limit.
    ``nplusone``: what an N+1 found in the scope does (``"log"``, ``"warn"``,
    ``"raise"``, ``"off"``); ``mode``: what an exceeded budget does. Both
    default to ``QUERY_GUARD["MODE"]`` (``"raise"`` under DEBUG and tests,
    ``"log"`` in production): an explicit ``"raise"`` raises in production
    too. Bad arguments raise ``ImproperlyConfigured`` when the decorator is
    applied, not when the view runs.
    """

    def __init__(
        self,
        max_queries: int | None = None,
        max_duplicates: int | None = None,
        nplusone: str | None = None,
        *,
        mode: str | None = None,
    ) -> None:
        self.max_queries = _count("max_queries", max_queries)
        self.max_duplicates = _count("max_duplicates", max_duplicates)
        self.nplusone = _mode("nplusone", nplusone)
        self.mode = _mode("mode", mode)
        # The blocks this instance is the context manager of, per context
        # (thread or task), innermost last: one instance may be shared.
        self._open: contextvars.ContextVar[tuple[Any, ...]] = contextvars.ContextVar(
            f"perfkit_query_budget_{id(self)}", default=()
        )

    @contextmanager
    def _scope(self, where: str) -> Iterator[QueryReport]:
        with capture(nplusone=self.nplusone != "off") as report:
            yield report
        # Only a block that finished: an exception from the view is its own.
        enforce(
            report,
            where=where,
            max_queries=self.max_queries,
            max_duplicates=self.max_duplicates,
            mode=self.mode,
            nplusone=self.nplusone,
        )

    def __enter__(self) -> QueryReport:
        scope = self._scope("query_budget block")
        report = scope.__enter__()
        self._open.set((*self._open.get(), scope))
        return report

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        *rest, scope = self._open.get()
        self._open.set(tuple(rest))
        scope.__exit__(exc_type, exc, tb)

    def __call__(self, func: F) -> F:
        where = f"{func.__module__}.{func.__qualname__}"
        if iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_view(*args: Any, **kwargs: Any) -> Any:
                with self._scope(where):
                    return await func(*args, **kwargs)

            return async_view  # type: ignore[return-value]

        @functools.wraps(func)
        def view(*args: Any, **kwargs: Any) -> Any:
            with self._scope(where):
                return func(*args, **kwargs)

        return view  # type: ignore[return-value]
