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
walk costs a dict lookup per frame, and the line of a frame once per place in
its code. What it cannot avoid on Python 3.11: every frame looked at becomes a
frame object (about 0.1 µs each), and an ORM query runs 5 to 8 Django frames
below the project's line.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from typing import Any

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from django_perfkit.conf import get_settings
from django_perfkit.record import QueryRecord, _current, _short_path

_new_tuple = tuple.__new__
_getframe = sys._getframe
_perf_counter = time.perf_counter

__all__ = [
    "call_site",
    "collect_query",
    "collector",
    "find_site",
    "install",
    "install_on_all_connections",
    "is_library_file",
]


class _LibraryFiles(dict[str, bool]):
    """File name -> whether it is library code, decided on first sight.

    Subscripted on the hot path (no ``.get()`` call per frame); a missing
    file name is decided by ``__missing__``.
    """

    def __missing__(self, filename: str) -> bool:
        known = filename.startswith(_prefixes()) or filename.startswith("<frozen")
        self[filename] = known
        return known


_library_file = _LibraryFiles()
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
    return _library_file[filename]


def find_site(skip: int = 1) -> tuple[str, int, str] | None:
    """``(filename, line, function)`` of the first frame in project code."""
    try:
        frame: Any = sys._getframe(skip)
    except ValueError:  # fewer frames than skip
        return None
    while frame is not None:
        code = frame.f_code
        filename = code.co_filename
        if not _library_file[filename]:
            return (filename, _line(frame, code), code.co_name)
        frame = frame.f_back
    return None


#: ``(id(code), instruction offset) -> (code, line)``: Python finds a frame's
#: line by scanning the code's line table from its start, so a line in a long
#: view costs more the further down it is (on 3.11 here, about 55 ns per line
#: above it: 0.1 µs on a function's first line, 2.3 µs forty lines down). The
#: code object is kept in the value so that its id cannot be reused while the
#: entry exists.
_lines: dict[tuple[int, int], tuple[Any, int]] = {}
_MAX_LINES = 8192


def _line(frame: Any, code: Any) -> int:
    key = (id(code), frame.f_lasti)
    known = _lines.get(key)
    if known is not None:
        return known[1]
    line: int = frame.f_lineno
    if len(_lines) >= _MAX_LINES:  # code made at run time: keep the memory bounded
        _lines.clear()
    _lines[key] = (code, line)
    return line


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


#: What the collector needs from the settings, read once per settings change
#: instead of per query: ``(collect, max recorded, call sites, hide params,
#: EXPLAIN threshold in seconds)``. ``None`` until the first query in a record,
#: and again after ``conf.reset()``.
_plan: tuple[bool, int, bool, bool, float] | None = None


#: Held while the plan is read or forgotten: ``conf.reset()`` clears the
#: settings and then the plan, so a plan read from the old settings by another
#: thread meanwhile is stored before the reset forgets it, never after.
_plan_lock = threading.Lock()


def reset_plan() -> None:
    """Forget the settings the collector read (``conf.reset()`` calls this)."""
    global _plan
    with _plan_lock:
        _plan = None


def _read_plan() -> tuple[bool, int, bool, bool, float]:
    global _plan
    with _plan_lock:
        settings = get_settings()
        plan = _plan = (
            settings.collect_queries,
            settings.max_queries_recorded,
            settings.capture_call_sites,
            settings.hide_sql_params,
            settings.indexes.explain_seconds,
        )
    return plan


def collect_query(
    execute: Callable[..., Any],
    sql: str,
    params: Any,
    many: bool,
    context: dict[str, Any],
) -> Any:
    """The execute wrapper. One function serves every connection.

    A plain function rather than an object with ``__call__``: Django calls it
    through ``functools.partial`` on every query, and a function is the
    cheapest thing for that call to reach.
    """
    record = _current.get()
    if record is None:
        return execute(sql, params, many, context)
    collect, limit, capture_sites, hide_params, explain_seconds = _plan or _read_plan()
    if not collect:
        return execute(sql, params, many, context)
    # Everything that does not need the query's outcome is done before it
    # runs: after a round trip to the database the process comes back with
    # its CPU caches cold (it slept; the database ran), and every line run
    # then costs several times what it costs now.
    stats = record.db
    guard = record.guard
    queries = stats.queries
    site = None
    if capture_sites and guard is None and len(queries) < limit:
        # find_site(), inlined: a call per query saved. It starts at frame 2:
        # frame 0 is this function and frame 1 what called it, Django's
        # _execute_with_wrappers (or an execute wrapper outside this one),
        # never the line that asked for the query. Each frame looked at costs
        # Python a frame object, so one not looked at is one not built.
        try:
            frame: Any = _getframe(2)
        except ValueError:  # called by hand from the top of a stack
            frame = None
        while frame is not None:
            code = frame.f_code
            if not _library_file[code.co_filename]:
                # _line(), its lookup inlined: a Python call costs about what
                # the lookup does.
                known = _lines.get((id(code), frame.f_lasti))
                line = known[1] if known is not None else _line(frame, code)
                site = (code.co_filename, line, code.co_name)
                break
            frame = frame.f_back
        frame = None  # not kept alive while the query runs
    if type(params) is tuple:  # what the ORM passes
        try:
            params_hash = hash(params)
        except TypeError:  # a list among the parameters (a PostgreSQL array)
            params_hash = _params_hash(params)
    else:
        params_hash = _params_hash(params)
    alias = context["connection"].alias
    kept_params = None if hide_params else params
    # The EXPLAIN threshold: every query when the record asks for plans.
    explain_at = 0.0 if record.explain else explain_seconds
    failed = True
    start = _perf_counter()
    try:
        result = execute(sql, params, many, context)
        failed = False
        return result
    finally:
        duration = _perf_counter() - start
        stats.count += 1
        stats.time += duration
        # Decided now, not before the query: queries of other threads (or
        # nested in this one) may have filled the record meanwhile.
        keep = len(queries) < limit
        if guard is not None:
            # The query guard walks the same frames (and a few more): its
            # walk finds the call site too, so it is not walked twice.
            try:
                site = guard.observe(sql, params, duration)
            except Exception as exc:  # a detector bug must not fail the query
                record.errors.append(f"query guard: {exc!r}")
            if not capture_sites:
                site = None
            elif keep and site is None:
                site = find_site(3)  # past this function and what called it
        if keep:
            queries.append(
                # tuple.__new__ with one tuple: the cheapest way to build a
                # NamedTuple (no keyword handling), on a path run per query.
                _new_tuple(
                    QueryRecord,
                    (sql, alias, duration, site, params_hash, kept_params, many, failed),
                )
            )
        else:
            stats.dropped += 1
        if duration >= explain_at and not failed and not many:
            _advise(record, context["connection"], sql, params, site)


#: The name the rest of perfkit (and the benchmarks) know the wrapper by.
collector = collect_query


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
        advice = explain_after(connection, sql, params, site or find_site(4), shape)
        seen = {item.fingerprint for item in record.index_advice}
        record.index_advice.extend(item for item in advice if item.fingerprint not in seen)
    except Exception as exc:  # never the query's problem
        record.errors.append(f"index advisor: {exc!r}")


def install(connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """Put the collector on one connection (idempotent). A ``connection_created`` receiver."""
    if collector not in connection.execute_wrappers:
        # First in the list means outermost: the time it measures includes any
        # other wrapper's, as the request experienced it.
        connection.execute_wrappers.insert(0, collector)


def install_on_all_connections() -> None:
    for connection in connections.all(initialized_only=True):
        install(connection)
