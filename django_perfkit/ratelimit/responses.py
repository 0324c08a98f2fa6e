"""The 429 response and the rate-limit headers.

Headers follow the IETF draft (``RateLimit-Policy`` and ``RateLimit``,
draft-ietf-httpapi-ratelimit-headers) plus ``Retry-After`` (RFC 9110), and
optionally the legacy ``X-RateLimit-*`` trio. A 429 always carries them; an
allowed response carries them only when asked (``headers=True`` or
``PERFKIT["RATELIMIT_HEADERS"]``): the draft warns that they tell a client
how much capacity a route has.

The policy is named after its quota and window (``"5-per-60s"``), never after
the group, which is often a module path.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse

from django_perfkit.conf import get_settings
from django_perfkit.ratelimit.core import Usage

PROBLEM_TYPE = "https://iana.org/assignments/http-problem-types#quota-exceeded"


def policy_name(usage: Usage) -> str:
    return f"{usage['limit']}-per-{usage['period']}s"


def add_headers(response: Any, usage: Usage) -> None:
    name = policy_name(usage)
    wait = usage["time_left"] if usage["should_limit"] else usage["reset"]
    response["RateLimit-Policy"] = f'"{name}";q={usage["limit"]};w={usage["period"]}'
    response["RateLimit"] = f'"{name}";r={usage["remaining"]};t={wait}'
    if usage["should_limit"]:
        response["Retry-After"] = str(max(1, usage["time_left"]))
    if get_settings().ratelimit_legacy_headers:
        response["X-RateLimit-Limit"] = str(usage["limit"])
        response["X-RateLimit-Remaining"] = str(usage["remaining"])
        response["X-RateLimit-Reset"] = str(wait)


def _wants_json(request: HttpRequest) -> bool:
    accept = request.META.get("HTTP_ACCEPT", "")
    return "application/json" in accept or "application/problem+json" in accept


def ratelimited_response(request: HttpRequest, usage: Usage | None) -> HttpResponse:
    """429 Too Many Requests (503 when Redis failed and the policy is fail-closed)."""
    status = 503 if usage is not None and usage["failed"] else 429
    retry = max(1, usage["time_left"]) if usage is not None else 60
    detail = (
        f"Too many requests; try again in {retry} second{'s' if retry != 1 else ''}."
        if status == 429
        else f"Rate limiting is unavailable; try again in {retry} seconds."
    )
    response: HttpResponse
    if _wants_json(request):
        body = {
            "type": PROBLEM_TYPE if status == 429 else "about:blank",
            "title": "Too Many Requests" if status == 429 else "Service Unavailable",
            "status": status,
            "detail": detail,
        }
        response = JsonResponse(body, status=status, content_type="application/problem+json")
    else:
        response = HttpResponse(detail, status=status, content_type="text/plain; charset=utf-8")
    if usage is not None:
        add_headers(response, usage)
    else:
        response["Retry-After"] = str(retry)
    return response
