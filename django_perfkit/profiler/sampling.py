"""Sampled profiles of slow requests: ``PROFILER["SAMPLE_SLOW"] = N``.

Whether a request is slow is known only when it ends, too late to profile
it. So perfkit remembers, per process, the routes that had a slow request in
the last :data:`REMEMBER` seconds (at most :data:`MAX_ROUTES` of them), and
profiles one in ``N`` of the next requests to such a route, from the view's
start (like a staff user's profile). When the request ends the profile is
kept only if it was slow again; otherwise it is dropped, unstored. Each
route gets at most one kept profile per ``MIN_INTERVAL`` (the same ``SET
NX`` in Redis as the header's callers), so a slow route costs one sampled
request in N, and nothing once its profile is taken. A request to any other
route costs one dict lookup.
"""

from __future__ import annotations

import itertools
import threading
import time

from django.http import HttpRequest

from django_perfkit.conf import get_settings
from django_perfkit.profiler.session import ProfileRun, _claim

__all__ = ["MAX_ROUTES", "REMEMBER", "claim_sample", "forget", "note_slow"]

#: Seconds a slow request keeps its route sampled.
REMEMBER = 600.0
#: Routes remembered at most (the oldest are forgotten first).
MAX_ROUTES = 256

_slow_routes: dict[str, float] = {}
_counter = itertools.count()
_lock = threading.Lock()


def note_slow(route: str | None) -> None:
    """A request to ``route`` was slow (the slow-request reporter calls this)."""
    if route is None or not get_settings().profiler.sample_slow:
        return
    with _lock:
        _slow_routes.pop(route, None)
        _slow_routes[route] = time.monotonic()
        while len(_slow_routes) > MAX_ROUTES:
            del _slow_routes[next(iter(_slow_routes))]


def forget() -> None:
    """Forget every slow route (tests; a settings change)."""
    with _lock:
        _slow_routes.clear()


def claim_sample(request: HttpRequest) -> ProfileRun | None:
    """Before the view: a profile run (not started) if this request is sampled.

    Its route was slow lately, it is the 1-in-N, and the route has had no
    profile in ``MIN_INTERVAL`` (a Redis ``SET NX``: call it off the event loop).
    """
    match = getattr(request, "resolver_match", None)
    if match is None:
        return None
    seen = _slow_routes.get(match.route)
    if seen is None:
        return None
    every = get_settings().profiler.sample_slow
    if not every or time.monotonic() - seen > REMEMBER:
        return None
    if next(_counter) % every:
        return None
    run = ProfileRun(f"sample:{match.route}", html=False, sampled=True)
    return run if _claim(run.who) else None
