"""Who may open the panel, and who may signal PostgreSQL sessions from it.

The panel is for the people running the site: active staff users by default,
or the users holding ``PANEL["PERMISSION"]``. Anyone else gets the site's own
404, the same as for a URL that does not exist, so the panel's presence is
not revealed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from django.http import Http404, HttpRequest, HttpResponse

from django_perfkit.conf import get_settings
from django_perfkit.redis import get_gateway

__all__ = ["may_open_panel", "may_signal", "panel_view"]

V = TypeVar("V", bound=Callable[..., HttpResponse])


def _user(request: HttpRequest) -> Any:
    user = getattr(request, "user", None)
    return user if user is not None and user.is_active else None


def may_open_panel(request: HttpRequest) -> bool:
    """Staff (or ``PANEL["PERMISSION"]``), signed in and active."""
    user = _user(request)
    if user is None:
        return False
    permission = get_settings().panel.permission
    return bool(user.has_perm(permission) if permission else user.is_staff)


def may_signal(request: HttpRequest) -> bool:
    """May cancel a query or end a session: panel access and superuser (or
    ``PANEL["SIGNAL_PERMISSION"]``)."""
    if not may_open_panel(request):
        return False
    user = _user(request)
    permission = get_settings().panel.signal_permission
    return bool(user.has_perm(permission) if permission else user.is_superuser)


def panel_view(view: V) -> V:
    """Serve ``view`` to those who may open the panel (404 to the others), never cached
    by a shared cache, never framed by another site."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not may_open_panel(request):
            raise Http404("Page not found.")
        # The fleet stats are about the site: not the panel's own page loads,
        # assets and refreshes (report_fleet skips such a request).
        request._perfkit_panel = True  # type: ignore[attr-defined]
        # Redis failures before the page's reads: more after them, and the page says so.
        request._perfkit_redis_failures = get_gateway().failures  # type: ignore[attr-defined]
        response = view(request, *args, **kwargs)
        response["Cache-Control"] = "private, no-store"
        response["X-Content-Type-Options"] = "nosniff"
        response["Referrer-Policy"] = "same-origin"
        response["X-Frame-Options"] = "DENY"
        return response

    return wrapper  # type: ignore[return-value]
