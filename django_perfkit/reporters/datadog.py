"""Datadog: perfkit's numbers on the request's root span (ddtrace 4.x).

When the project runs ddtrace (``ddtrace-run``, ``import ddtrace.auto``) and
tracing is on, :func:`report_datadog` sets, on the local root span (the
``django.request`` span of ddtrace's Django integration):

* metrics ``perfkit.db.count``, ``perfkit.db.duplicates``, ``perfkit.db.time_ms``,
  ``perfkit.cache.hits``, ``perfkit.cache.misses``, ``perfkit.nplusone.count``,
  ``perfkit.ratelimited`` and ``perfkit.slow`` (0 or 1);
* the tag ``perfkit.profile_id`` when the request was profiled;

and each ``perfkit.timer("x")`` section becomes a child span
``perfkit.timer`` with resource ``x``. No span per query: ddtrace's database
integration makes those already.

Why it looks the way it does: perfkit never imports ddtrace (it reads
``sys.modules``: a project that did not import it pays a dict lookup), never
calls ``tracer.configure()`` (which turns tracing on as a side effect), and
does nothing when ``tracer.enabled`` is false (a disabled tracer still
builds spans, at about 16 µs each). Numbers go in metrics and strings in
tags, as ddtrace 4 types them.
"""

from __future__ import annotations

import sys
from typing import Any

from django.http import HttpRequest

from django_perfkit.record import RequestRecord
from django_perfkit.reporters.metrics import span_metrics

__all__ = ["active_tracer", "report_datadog"]


def active_tracer() -> Any | None:
    """ddtrace's tracer, if the project imported ddtrace and tracing is on."""
    if "ddtrace" not in sys.modules:
        return None
    try:
        from ddtrace.trace import tracer
    except Exception:  # an older or broken ddtrace
        return None
    return tracer if tracer.enabled else None


def report_datadog(record: RequestRecord, request: HttpRequest, response: Any) -> None:
    """The reporter: perfkit's numbers as metrics and tags of the root span."""
    tracer = active_tracer()
    if tracer is None:
        return
    root = tracer.current_root_span()
    if root is None:
        return
    root.set_metrics(span_metrics(record))
    if record.profile_id:
        root.set_tag("perfkit.profile_id", record.profile_id)
