"""The query collector: every database query of a request, on every alias.

It is a Django execute wrapper (``connection.execute_wrappers``), installed on
each connection as it is created (the ``connection_created`` signal) and on the
connections that already exist when the app is ready. It stays installed for the
life of the connection; when no request record is open it costs one
``ContextVar.get()`` and passes the query through untouched. That is why a query
made in another thread (``sync_to_async``, a thread pool) still lands in the
right record: the wrapper is on every thread's connection, and the record is
found through the context, which asgiref copies into its threads.

Call site: the first stack frame outside Django, asgiref, the standard library,
installed packages and perfkit, that is, the line in the project that made the ORM run the query.
Which files count as library code is decided once per file and cached, so the
walk costs a dict lookup per frame.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import time
from collections.abc import Callable
from typing import Any

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from django_perfkit.conf import get_settings
from django_perfkit.record import QueryRecord, _current, _short_path

_new_tuple = tuple.__new__

__all__ = [
    "QueryCollector",
    "call_site",
    "find_site",
    "install",
    "install_on_all_connections",
    "is_library_file",
]

_library_file: dict[str, bool] = {}
_library_prefixes: tuple[str, ...] | None = None


def _prefixes() -> tuple[str, ...]:
    global _library_prefixes
    if _library_prefixes is None:
        import asgiref
        import django

        import django_perfkit

        dirs = {
            os.path.dirname(django.__file__),
            os.path.dirname(asgiref.__file__),
            os.path.dirname(django_perfkit.__file__),
            sysconfig.get_paths()["stdlib"],
            # Installed packages (model_bakery, DRF, ...): the line to change is
            # the project's call into them.
            sysconfig.get_paths()["purelib"],
            sysconfig.get_paths()["platlib"],
        }
        _library_prefixes = tuple(d.rstrip(os.sep) + os.sep for d in dirs)
    return _library_prefixes


def is_library_file(filename: str) -> bool:
    """Whether ``filename`` is Django, asgiref, perfkit, the standard library or an
    installed package (``site-packages``)."""
    known = _library_file.get(filename)
    if known is None:
        known = filename.startswith(_prefixes()) or filename.startswith("<frozen")
        _library_file[filename] = known
    return known


def find_site(skip: int = 1) -> tuple[str, int, str] | None:
    """``(filename, line, function)`` of the first frame in project code."""
    frame: Any = sys._getframe(skip)
    while frame is not None:
        code = frame.f_code
        filename = code.co_filename
        is_library = _library_file.get(filename)
        if is_library is None:
            is_library = is_library_file(filename)
        if not is_library:
            return (filename, frame.f_lineno, code.co_name)
        frame = frame.f_back
    return None


def call_site(skip: int = 1) -> str | None:
    """``path/to/file.py:42 in view_name`` of the first frame in project code."""
    site = find_site(skip + 1)
    return None if site is None else f"{_short_path(site[0])}:{site[1]} in {site[2]}"


def _params_hash(params: Any) -> int:
    # Enough to tell "the same query again" from "the same SQL, other values"
    # without keeping the values themselves.
    try:
        if type(params) is tuple:  # what the ORM passes
            return hash(params)
        if isinstance(params, list):
            return hash(tuple(params))
        if isinstance(params, dict):
            return hash(tuple(sorted(params.items())))
        return hash(params)
    except TypeError:
        return hash(repr(params))


class QueryCollector:
    """The execute wrapper. One instance serves every connection."""

    def __call__(
        self,
        execute: Callable[..., Any],
        sql: str,
        params: Any,
        many: bool,
        context: dict[str, Any],
    ) -> Any:
        record = _current.get()
        if record is None:
            return execute(sql, params, many, context)
        settings = get_settings()
        if not settings.collect_queries:
            return execute(sql, params, many, context)
        # Everything that does not need the query's outcome is done before it
        # runs: after a round trip to the database the process comes back with
        # its CPU caches cold (it slept; the database ran), and every line run
        # then costs several times what it costs now.
        stats = record.db
        guard = record.guard
        limit = settings.max_queries_recorded
        site = None
        if guard is None and settings.capture_call_sites and len(stats.queries) < limit:
            site = find_site(2)
        try:
            params_hash = hash(params) if type(params) is tuple else _params_hash(params)
        except TypeError:  # a list among the parameters (a PostgreSQL array)
            params_hash = _params_hash(params)
        alias = context["connection"].alias
        kept_params = None if settings.hide_sql_params else params
        # The EXPLAIN threshold: every query when the record asks for plans.
        explain_at = 0.0 if record.explain else settings.indexes.explain_seconds
        failed = True
        start = time.perf_counter()
        try:
            result = execute(sql, params, many, context)
            failed = False
            return result
        finally:
            duration = time.perf_counter() - start
            stats.count += 1
            stats.time += duration
            # Decided now, not before the query: queries of other threads (or
            # nested in this one) may have filled the record meanwhile.
            keep = len(stats.queries) < limit
            if guard is not None:
                # The query guard walks the same frames (and a few more): its
                # walk finds the call site too, so it is not walked twice.
                try:
                    site = guard.observe(sql, params, duration)
                except Exception as exc:  # a detector bug must not fail the query
                    record.errors.append(f"query guard: {exc!r}")
                if not settings.capture_call_sites:
                    site = None
                elif keep and site is None:
                    site = find_site(2)
            if keep:
                stats.queries.append(
                    # tuple.__new__ with one tuple: the cheapest way to build a
                    # NamedTuple (no keyword handling), on a path run per query.
                    _new_tuple(
                        QueryRecord,
                        (
                            sql,
                            alias,
                            duration,
                            site,
                            params_hash,
                            kept_params,
                            many,
                            failed,
                        ),
                    )
                )
            else:
                stats.dropped += 1
            if duration >= explain_at and not failed and not many:
                _advise(record, context["connection"], sql, params, site)


#: The databases the index advisor reads plans of (``queries.indexes.VENDORS``;
#: repeated here so that the collector does not import the advisor until needed).
ADVISED_VENDORS = ("postgresql", "sqlite")


def _advise(record: Any, connection: Any, sql: Any, params: Any, site: Any) -> None:
    try:
        # One plain SELECT: not a psycopg sql.Composed, not "SELECT ...; DELETE ..."
        # (EXPLAIN would run the statements after the first).
        if not isinstance(sql, str) or ";" in sql or connection.vendor not in ADVISED_VENDORS:
            return
        if sql.lstrip()[:6].upper() != "SELECT":
            return
        from django_perfkit.queries.fingerprint import fingerprint
        from django_perfkit.queries.indexes import explain_after

        shape = fingerprint(sql)
        advice = explain_after(connection, sql, params, site or find_site(3), shape)
        seen = {item.fingerprint for item in record.index_advice}
        record.index_advice.extend(item for item in advice if item.fingerprint not in seen)
    except Exception as exc:  # never the query's problem
        record.errors.append(f"index advisor: {exc!r}")


collector = QueryCollector()


def install(connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """Put the collector on one connection (idempotent). A ``connection_created`` receiver."""
    if collector not in connection.execute_wrappers:
        # First in the list means outermost: the time it measures includes any
        # other wrapper's, as the request experienced it.
        connection.execute_wrappers.insert(0, collector)


def install_on_all_connections() -> None:
    for connection in connections.all(initialized_only=True):
        install(connection)
