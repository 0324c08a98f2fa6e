"""A stored profile, for the people allowed to see it.

``path("perfkit/", include("django_perfkit.urls"))`` in the project's URLs
serves ``perfkit/profiles/<id>/`` (pyinstrument's HTML page) and
``perfkit/profiles/<id>/speedscope.json`` (for https://www.speedscope.app).
Allowed: those who may open the panel (staff users by default,
``PANEL["PERMISSION"]``), a client in ``INTERNAL_IPS`` under ``DEBUG``, or
``?token=`` with a valid profile token. Anyone else gets the same 404 as
for a profile that does not exist.
"""

from __future__ import annotations

from django.conf import settings as django_settings
from django.http import Http404, HttpRequest, HttpResponse

from django_perfkit.panel.access import may_open_panel
from django_perfkit.profiler.session import load_profile, render
from django_perfkit.profiler.tokens import read_token

__all__ = ["profile_html", "profile_speedscope"]


def _may_view(request: HttpRequest) -> bool:
    if may_open_panel(request):
        return True
    if django_settings.DEBUG and request.META.get("REMOTE_ADDR") in getattr(
        django_settings, "INTERNAL_IPS", ()
    ):
        return True
    token = request.GET.get("token")
    return token is not None and read_token(token) is not None


def _profile(request: HttpRequest, profile_id: str) -> dict[str, object]:
    data = load_profile(profile_id) if _may_view(request) else None
    if data is None:
        raise Http404("No such profile.")
    # Opening a profile is not the site's traffic: not in the fleet stats.
    request._perfkit_panel = True  # type: ignore[attr-defined]
    return data


def _private(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "private, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    response["Referrer-Policy"] = "same-origin"
    response["X-Frame-Options"] = "DENY"
    return response


def profile_html(request: HttpRequest, profile_id: str) -> HttpResponse:
    """pyinstrument's HTML view of one profiled request."""
    return _private(HttpResponse(render(_profile(request, profile_id), "html")))


def profile_speedscope(request: HttpRequest, profile_id: str) -> HttpResponse:
    """The profile as speedscope JSON."""
    body = render(_profile(request, profile_id), "speedscope")
    return _private(HttpResponse(body, content_type="application/json"))
