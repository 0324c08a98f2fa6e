"""The request record: one object per request that collectors write and reporters read.

:class:`~django_perfkit.middleware.PerfkitMiddleware` opens a record when a request
comes in and closes it when the response goes out. In between, it lives in a
:class:`contextvars.ContextVar`, which is the right scope for every way Django
runs code: WSGI threads, ASGI tasks, and ``sync_to_async`` / ``async_to_sync``
hops (asgiref copies the context into the thread it runs in), so a query made by
an async view through the ORM lands in the same record as one made by a sync view.

Collectors (the query collector, later the cache and rate-limit collectors) call
:func:`current_record` and write into the record's typed sections; when no record
is open (management commands, Celery tasks) they get ``None`` and do nothing.
Reporters (``Server-Timing``, later ddtrace, logs and the panel) read the closed
record once, at the end.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, ParamSpec, TypeVar

if TYPE_CHECKING:
    from django_perfkit.queries.guard import Guard, NPlusOne, UnusedPrefetch
    from django_perfkit.queries.indexes import IndexAdvice

__all__ = [
    "CacheStats",
    "QueryRecord",
    "RatelimitDecision",
    "QueryStats",
    "RequestRecord",
    "Section",
    "current_record",
    "record_request",
    "timer",
]

P = ParamSpec("P")
R = TypeVar("R")


class QueryRecord(NamedTuple):
    """One database query as the collector saw it.

    ``sql`` is the statement with placeholders, never with the parameters bound
    in: parameters can carry personal data, so they are kept only as a hash
    (enough to spot the same query run twice) unless ``HIDE_SQL_PARAMS`` is off.

    A tuple rather than a dataclass because one is built per query on the hot
    path; ``call_site`` is formatted only when someone reads it.
    """

    sql: str
    alias: str
    duration: float  # seconds
    #: ``(filename, line, function)`` of the first frame in project code.
    site: tuple[str, int, str] | None
    params_hash: int
    params: Any = None
    many: bool = False
    failed: bool = False

    @property
    def call_site(self) -> str | None:
        """``path/to/views.py:42 in article_list`` (relative to the working directory)."""
        if self.site is None:
            return None
        filename, line, function = self.site
        return f"{_short_path(filename)}:{line} in {function}"


_cwd = os.getcwd() + os.sep


def _short_path(filename: str) -> str:
    return filename[len(_cwd) :] if filename.startswith(_cwd) else filename


@dataclass(slots=True)
class QueryStats:
    """The database section of a record: totals over every query, details over the first N.

    ``count`` and ``time`` cover every query of the request, however many; the
    per-query details in ``queries`` stop at ``MAX_QUERIES_RECORDED`` so a request
    that runs 100,000 queries cannot eat the worker's memory.
    """

    count: int = 0
    time: float = 0.0  # seconds
    queries: list[QueryRecord] = field(default_factory=list)
    dropped: int = 0

    @property
    def duplicates(self) -> int:
        """Queries that repeat an earlier one exactly (same SQL, alias and parameters)."""
        seen: set[tuple[str, str, int]] = set()
        dupes = 0
        for q in self.queries:
            sig = (q.sql, q.alias, q.params_hash)
            if sig in seen:
                dupes += 1
            else:
                seen.add(sig)
        return dupes


@dataclass(slots=True)
class RatelimitDecision:
    """One rate-limit check: which limit, what it decided, what is left."""

    group: str
    limited: bool
    limit: int
    remaining: int
    algorithm: str
    #: True when Redis could not be asked and the limit's fail policy decided.
    failed: bool


@dataclass(slots=True)
class CacheStats:
    """The cache section of a record (``.cache()`` and ``@cached_on_write``).

    Lookups and the time they took; ``recomputes`` are on-write entries this
    request's writes recomputed at commit.
    """

    hits: int = 0
    misses: int = 0
    #: Results computed but not stored: too large, unpicklable, written meanwhile.
    skipped: int = 0
    #: On-write entries recomputed (their computation time is not in ``time``).
    recomputes: int = 0
    #: Seconds spent talking to Redis and (un)pickling, not running queries.
    time: float = 0.0


@dataclass(slots=True)
class Section:
    """A named, timed section: ``perfkit.timer("render")`` adds to one of these."""

    count: int = 0
    time: float = 0.0  # seconds


@dataclass(slots=True)
class RequestRecord:
    """Everything perfkit learns about one request."""

    method: str = ""
    path: str = ""
    started: float = field(default_factory=time.perf_counter)
    #: Wall-clock start (seconds since the epoch), for logs and the panel.
    started_at: float = field(default_factory=time.time)
    finished: float | None = None
    status: int | None = None
    #: The resolved URL pattern (``articles/<slug:slug>/``), not the raw path.
    route: str | None = None
    #: The route this request counts as in flight on (fleet stats), until it ends.
    inflight_route: str | None = None
    db: QueryStats = field(default_factory=QueryStats)
    cache: CacheStats = field(default_factory=CacheStats)
    sections: dict[str, Section] = field(default_factory=dict)
    #: Every rate-limit check of the request, in order.
    ratelimits: list[RatelimitDecision] = field(default_factory=list)
    #: Redis calls that failed or were skipped by the open circuit breaker.
    redis_failures: int = 0
    #: Set by perfkit when its own code failed (never by the app): reported, not raised.
    errors: list[str] = field(default_factory=list)
    #: Work to start once the response is built (deferred recomputes); None until some is.
    after_response: list[Callable[[], None]] | None = None
    #: The query guard's state while it watches this record (N+1 detection), else None.
    guard: Guard | None = None
    #: N+1 findings (of this record's own scope and of the ones absorbed into it).
    nplusone: list[NPlusOne] = field(default_factory=list)
    #: ``prefetch_related()`` lookups that nothing read.
    unused_prefetches: list[UnusedPrefetch] = field(default_factory=list)
    #: The id of this request's pyinstrument profile, when one was taken and kept.
    profile_id: str | None = None
    #: True when that profile was sampled (PROFILER["SAMPLE_SLOW"]), not asked for:
    #: its id is for the panel and the logs, not for the client's response.
    profile_sampled: bool = False
    #: ``perf_counter()`` when the view was about to run (the middleware's process_view).
    view_started: float | None = None
    #: EXPLAIN every SELECT (``capture(explain=True)``), not only the slow ones.
    explain: bool = False
    #: Index advice for this record's queries (one per query shape).
    index_advice: list[IndexAdvice] = field(default_factory=list)

    @property
    def duration(self) -> float:
        """Seconds from start to finish (or to now, while the request is running)."""
        end = self.finished if self.finished is not None else time.perf_counter()
        return end - self.started

    def add_section(self, label: str, seconds: float) -> None:
        section = self.sections.get(label)
        if section is None:
            section = self.sections[label] = Section()
        section.count += 1
        section.time += seconds

    def finish(self, status: int | None = None) -> None:
        self.finished = time.perf_counter()
        self.status = status

    def absorb(self, inner: RequestRecord, max_queries: int) -> None:
        """Add what a record opened inside this one saw (``capture()`` inside a request)."""
        db, more = self.db, inner.db
        db.count += more.count
        db.time += more.time
        room = max(0, max_queries - len(db.queries))
        db.queries.extend(more.queries[:room])
        db.dropped += more.dropped + max(0, len(more.queries) - room)
        cache, cached = self.cache, inner.cache
        cache.hits += cached.hits
        cache.misses += cached.misses
        cache.skipped += cached.skipped
        cache.recomputes += cached.recomputes
        cache.time += cached.time
        for label, section in inner.sections.items():
            mine = self.sections.setdefault(label, Section())
            mine.count += section.count
            mine.time += section.time
        self.ratelimits.extend(inner.ratelimits)
        self.nplusone.extend(inner.nplusone)
        self.unused_prefetches.extend(inner.unused_prefetches)
        self.index_advice.extend(inner.index_advice)
        self.redis_failures += inner.redis_failures
        self.errors.extend(inner.errors)
        if inner.after_response:
            # Work queued for after the response waits for the outer response.
            if self.after_response is None:
                self.after_response = []
            self.after_response.extend(inner.after_response)

    def run_after_response(self) -> None:
        """Start the work queued for after the response (each piece once; never raises)."""
        work, self.after_response = self.after_response, None
        for callback in work or ():
            try:
                callback()
            except Exception:
                logging.getLogger("django_perfkit").exception("perfkit: %r failed", callback)


_current: ContextVar[RequestRecord | None] = ContextVar("perfkit_request_record", default=None)


def current_record() -> RequestRecord | None:
    """The record of the request being served in this context, or ``None``."""
    return _current.get()


@contextmanager
def record_request(record: RequestRecord | None = None) -> Iterator[RequestRecord]:
    """Open a record for the duration of the block.

    The middleware uses this for every request; use it yourself to collect the
    same numbers around code that runs outside a request (a management command,
    a task, a test).
    """
    rec = record if record is not None else RequestRecord()
    token: Token[RequestRecord | None] = _current.set(rec)
    try:
        yield rec
    finally:
        if rec.finished is None:
            rec.finish(rec.status)
        _current.reset(token)
        rec.run_after_response()


def _timer_span(label: str) -> Any:
    """A ddtrace child span for a timer section, when a traced request is running."""
    try:
        from django_perfkit.reporters.datadog import active_tracer

        tracer = active_tracer()
        # Only under a span (the request, the view): never a root trace of its own
        # (a management command, a Celery task without its integration).
        if tracer is None or tracer.current_span() is None:
            return None
        return tracer.trace("perfkit.timer", resource=label)
    except Exception:
        return None


def _otel_timer_span(label: str) -> Any:
    """An OpenTelemetry child span for a timer section, under a recording span."""
    try:
        from django_perfkit.reporters.opentelemetry import start_timer_span

        return start_timer_span(label)
    except Exception:
        return None


class timer:
    """Time a custom section of a request: a context manager and a decorator.

    ::

        with perfkit.timer("render-feed"):
            ...

        @perfkit.timer("pricing")
        def compute_prices(): ...

        @perfkit.timer("fetch")
        async def fetch(): ...

    The time lands in the current request record under ``label`` (repeated
    sections add up) and so in ``Server-Timing`` as ``label;dur=...``. Outside a
    request it costs two clock reads and records nothing.
    """

    __slots__ = ("label", "_start", "_span")

    def __init__(self, label: str) -> None:
        checked: object = label  # callers are not always type-checked
        if not isinstance(checked, str) or not checked:
            raise ValueError("perfkit.timer() needs a non-empty string label, e.g. timer('render')")
        self.label = label
        self._start = 0.0
        self._span: Any = None

    def __enter__(self) -> timer:
        modules = sys.modules  # a dict lookup each when the project has no tracer
        if "ddtrace" in modules:
            self._span = _timer_span(self.label)
        if self._span is None and "opentelemetry.trace" in modules:
            self._span = _otel_timer_span(self.label)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        elapsed = time.perf_counter() - self._start
        span, self._span = self._span, None
        if span is not None:
            try:
                span.finish()
            except Exception:  # a tracing problem is not the timed code's
                logging.getLogger("django_perfkit").debug("perfkit: span.finish failed")
        rec = _current.get()
        if rec is not None:
            rec.add_section(self.label, elapsed)

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        label = self.label
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                # A fresh timer per call: one decorated function may run
                # concurrently in many tasks or threads.
                with timer(label):
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with timer(label):
                return func(*args, **kwargs)

        return wrapper
