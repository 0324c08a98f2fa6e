"""OpenTelemetry: perfkit's numbers on the request's span, as Datadog gets them.

When the project uses OpenTelemetry (``opentelemetry-api``, with an SDK and
``opentelemetry-instrumentation-django``, whose middleware opens the server
span around perfkit's), :func:`report_opentelemetry` sets on the current
span, if it is recording, the attributes of
:func:`~django_perfkit.reporters.metrics.span_metrics` (``perfkit.db.count``,
``perfkit.db.time_ms``, ``perfkit.nplusone.count``, ...) and
``perfkit.profile_id`` when the request was profiled; and each
``perfkit.timer("x")`` section becomes a child span ``perfkit.timer`` with the
attribute ``perfkit.section = "x"``.

perfkit never imports OpenTelemetry itself: a project that did not import
it pays a dict lookup (``sys.modules``), and a span that is not recording
(no SDK, or sampled out) gets nothing.
"""

from __future__ import annotations

import sys
from typing import Any

from django.http import HttpRequest

from django_perfkit.record import RequestRecord
from django_perfkit.reporters.metrics import span_metrics

__all__ = ["TimerSpan", "recording_span", "report_opentelemetry", "start_timer_span"]


def recording_span() -> Any | None:
    """OpenTelemetry's current span, if the project uses OpenTelemetry and it records."""
    if "opentelemetry.trace" not in sys.modules:
        return None
    try:
        from opentelemetry import trace

        span = trace.get_current_span()
    except Exception:  # a broken or partial install
        return None
    return span if span.is_recording() else None


def report_opentelemetry(record: RequestRecord, request: HttpRequest, response: Any) -> None:
    """The reporter: perfkit's numbers as attributes of the request's span."""
    span = recording_span()
    if span is None:
        return
    attributes: dict[str, Any] = dict(span_metrics(record))
    if record.profile_id:
        attributes["perfkit.profile_id"] = record.profile_id
    span.set_attributes(attributes)


class TimerSpan:
    """A ``perfkit.timer`` span, current while the section runs (the queries and
    spans inside it are its children); ``finish()`` ends it, as ddtrace's spans."""

    __slots__ = ("span", "token")

    def __init__(self, span: Any, token: Any) -> None:
        self.span = span
        self.token = token

    def finish(self) -> None:
        from opentelemetry import context

        try:
            context.detach(self.token)
        finally:
            self.span.end()


def start_timer_span(label: str) -> TimerSpan | None:
    """A child span for a ``perfkit.timer`` section, under a recording span only."""
    if recording_span() is None:
        return None
    from opentelemetry import context, trace

    span = trace.get_tracer("django_perfkit").start_span(
        "perfkit.timer", attributes={"perfkit.section": label}
    )
    return TimerSpan(span, context.attach(trace.set_span_in_context(span)))
