"""A django-debug-toolbar panel with perfkit's view of the request.

Add ``"django_perfkit.panel.toolbar.PerfkitToolbarPanel"`` to
``DEBUG_TOOLBAR_PANELS`` (django-debug-toolbar is not a dependency of
perfkit; this module imports it). The panel reads the request record that
``PerfkitMiddleware`` opened (so ``PerfkitMiddleware`` must come before
``DebugToolbarMiddleware``): query count, time and duplicates, the N+1
findings with their fix, index advice, ``.cache()`` hits,
rate-limit decisions and timed sections, the same summary a slow request gets
(:func:`~django_perfkit.profiler.slow.summarise`).
"""

from __future__ import annotations

from typing import Any

from debug_toolbar.panels import Panel
from django.http import HttpRequest

from django_perfkit.profiler.slow import summarise, summarise_finding
from django_perfkit.record import current_record

__all__ = ["PerfkitToolbarPanel"]


class PerfkitToolbarPanel(Panel):
    """perfkit's record of this request, in the toolbar."""

    title = "perfkit"
    template = "django_perfkit/toolbar/perfkit.html"
    #: It reads the record of the request it is in; that works under ASGI too.
    is_async = True

    @property
    def nav_subtitle(self) -> str:
        stats = self.get_stats()
        if not stats:
            return ""
        queries = stats["db"]["count"]
        found = len(stats["nplusone"])
        text = f"{queries} quer{'y' if queries == 1 else 'ies'}"
        return text + (f", {found} N+1" if found else "")

    def generate_stats(self, request: HttpRequest, response: Any) -> None:
        record = current_record()
        if record is None:  # PerfkitMiddleware is not above the toolbar's
            self.record_stats({"missing": True, "db": {"count": 0}, "nplusone": []})
            return
        summary = summarise(record)
        guard = record.guard
        if guard is not None and not summary["nplusone"]:
            # The guard turns what it saw into findings when the request ends,
            # after this panel: ask it now (findings() changes nothing).
            summary["nplusone"] = [summarise_finding(finding) for finding in guard.findings()]
        summary["ratelimits"] = [
            {
                "group": decision.group,
                "limited": decision.limited,
                "limit": decision.limit,
                "remaining": decision.remaining,
                "algorithm": decision.algorithm,
            }
            for decision in record.ratelimits
        ]
        summary["missing"] = False
        self.record_stats(summary)
