"""perfkit's numbers on OpenTelemetry spans, with the real SDK and an in-memory exporter.

The request goes through a middleware that opens a server span around
perfkit's, as opentelemetry-instrumentation-django's does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory

import django_perfkit
from django_perfkit.middleware import PerfkitMiddleware

trace = pytest.importorskip("opentelemetry.trace")
sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

EXPORTER = InMemorySpanExporter()
PROVIDER = sdk_trace.TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
# What a project's OpenTelemetry set-up does (once per process): perfkit's timer
# spans come from the global provider, like every instrumentation's.
trace.set_tracer_provider(PROVIDER)


@pytest.fixture(autouse=True)
def _exporter(settings: Any) -> Iterator[InMemorySpanExporter]:
    # The guard's production mode: the N+1 is reported, not raised.
    settings.PERFKIT = {**settings.PERFKIT, "QUERY_GUARD": {"MODE": "log"}}
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


def traced_view(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cursor:
        for i in range(3):
            cursor.execute("SELECT %s", [i])
    with django_perfkit.timer("pricing"):
        pass
    return HttpResponse("ok")


def serve(view: Callable[[HttpRequest], HttpResponse], *, sampled: bool = True) -> None:
    """One request, inside a server span like the Django instrumentation's."""
    tracer = PROVIDER.get_tracer("test")
    middleware = PerfkitMiddleware(view)
    request = RequestFactory().get("/traced/")
    if not sampled:
        with trace.use_span(trace.NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)):
            middleware(request)
        return
    with tracer.start_as_current_span("GET /traced/", kind=trace.SpanKind.SERVER):
        middleware(request)


@pytest.mark.django_db
def test_the_request_span_carries_perfkits_numbers() -> None:
    serve(traced_view)
    spans = {span.name: span for span in EXPORTER.get_finished_spans()}
    server = spans["GET /traced/"]
    assert server.attributes["perfkit.db.count"] == 3
    assert server.attributes["perfkit.nplusone.count"] == 1  # the loop, by shape
    assert server.attributes["perfkit.slow"] == 0
    assert server.attributes["perfkit.db.time_ms"] >= 0
    timer_span = spans["perfkit.timer"]
    assert timer_span.attributes["perfkit.section"] == "pricing"
    assert timer_span.parent is not None
    assert timer_span.parent.span_id == server.context.span_id


@pytest.mark.django_db
def test_a_span_that_is_not_recording_gets_nothing() -> None:
    serve(traced_view, sampled=False)
    assert EXPORTER.get_finished_spans() == ()


def test_a_timer_outside_any_span_makes_no_span(settings: Any) -> None:
    with django_perfkit.timer("alone"):
        pass
    assert EXPORTER.get_finished_spans() == ()
