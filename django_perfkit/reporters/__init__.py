"""Reporters read the closed request record once, at the end of the request.

A reporter is a callable ``(record, request, response) -> None`` in
:data:`REPORTERS`. The middleware runs them in order; one that raises is
logged and skipped, never allowed to fail the response. Adding a reporter
(ddtrace, a slow-request log, the panel's fleet stats) is one module here and
one line in that list.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest

from django_perfkit.fleet.stats import report_fleet
from django_perfkit.profiler.slow import report_slow_request
from django_perfkit.record import RequestRecord
from django_perfkit.reporters.datadog import report_datadog
from django_perfkit.reporters.opentelemetry import report_opentelemetry
from django_perfkit.reporters.server_timing import report_server_timing

Reporter = Callable[[RequestRecord, HttpRequest, Any], None]

REPORTERS: list[Reporter] = [
    report_server_timing,
    report_slow_request,
    report_datadog,
    report_opentelemetry,
    report_fleet,
]

__all__ = ["REPORTERS", "Reporter"]
