"""The panel's pages: Overview, Routes, Slow requests, Profiles, Rate limits, Database.

Server-rendered Django templates (``django_perfkit/panel/*.html``), usable
without JavaScript; a few lines of vanilla JS refresh the page's content.
Every page reads what is already kept (fleet stats, slow requests and
profiles in Redis; ``pg_stat_activity``): opening the panel never changes
what it shows, and with Redis down a page still renders, empty, saying so.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_protect

from django_perfkit.conf import get_settings
from django_perfkit.fleet.stats import fleet_snapshot
from django_perfkit.panel import assets
from django_perfkit.panel.access import may_signal, panel_view
from django_perfkit.panel.database import (
    SIGNALS,
    NotPostgreSQL,
    activity,
    blocking_chains,
    signal_backend,
)
from django_perfkit.panel.svg import bar_chart, sparkline
from django_perfkit.profiler.session import recent_profiles
from django_perfkit.profiler.slow import recent_slow_requests, slow_request_count
from django_perfkit.redis import get_gateway

__all__ = [
    "database",
    "overview",
    "panel_css",
    "panel_js",
    "profiles",
    "ratelimits",
    "routes",
    "signal",
    "slow",
]

#: Routes-table columns: ?sort= value -> the row's key (descending, but the route).
ROUTE_SORTS: dict[str, str] = {
    "route": "route",
    "requests": "requests",
    "inflight": "inflight",
    "errors": "errors",
    "p50": "p50_ms",
    "p95": "p95_ms",
    "p99": "p99_ms",
    "mean": "mean_ms",
    "queries": "mean_queries",
    "limited": "ratelimited",
}


def _minutes(request: HttpRequest) -> int:
    """The window: ``?minutes=`` within the kept window, else ``PANEL["MINUTES"]``."""
    conf = get_settings()
    kept = conf.fleet.window_minutes
    try:
        wanted = int(request.GET.get("minutes", conf.panel.minutes))
    except ValueError:
        wanted = conf.panel.minutes
    return max(1, min(wanted, kept))


def _when(timestamp: float | None) -> datetime.datetime | None:
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(float(timestamp), tz=datetime.timezone.utc)


def _page(request: HttpRequest, template: str, page: str, **context: Any) -> HttpResponse:
    conf = get_settings()
    gateway = get_gateway()
    context.setdefault("refresh_seconds", conf.panel.refresh_seconds)
    context.update(
        # For the script: "5" or "2.5", never localized ("2,5").
        refresh_attribute=f"{context['refresh_seconds']:g}",
        # Passed, not left to the "request" context processor a project may not have.
        request=request,
        page=page,
        redis_configured=gateway.configured,
        # A read that failed (or was skipped by the open breaker) while building
        # this page: what it shows may be empty or partial, and it says so.
        redis_failed=gateway.configured and gateway.failures > failures_before(request),
        now=_when(time.time()),
        window_choices=[m for m in (5, 15, 60, 180, 1440) if m <= conf.fleet.window_minutes],
    )
    return TemplateResponse(request, f"django_perfkit/panel/{template}", context)


def _minute_labels(minutes: int, now: float) -> list[str]:
    current = int(now // 60)
    return [
        time.strftime("%H:%M", time.gmtime(minute * 60))
        for minute in range(current - minutes + 1, current + 1)
    ]


def failures_before(request: HttpRequest) -> int:
    return int(getattr(request, "_perfkit_redis_failures", 0))


@panel_view
def overview(request: HttpRequest) -> HttpResponse:
    """Servers, requests per second, p95, errors and requests in flight."""
    minutes = _minutes(request)
    now = time.time()
    snapshot = fleet_snapshot(minutes, now=now)
    servers = [
        {
            "id": sid,
            **info,
            "started_at": _when(info.get("started")),
            "seen_ago": round(now - float(info.get("seen", now)), 1),
            "uptime_minutes": round((now - float(info.get("started", now))) / 60),
        }
        for sid, info in sorted(snapshot["servers"].items())
    ]
    totals = snapshot["totals"]
    slowest = sorted(
        (row for row in snapshot["routes"] if row["requests"]),
        key=lambda r: -(r["p95_ms"] or 0),
    )[:5]
    return _page(
        request,
        "overview.html",
        "overview",
        minutes=minutes,
        servers=servers,
        totals=totals,
        slowest=slowest,
        chart=bar_chart(
            totals["series"], _minute_labels(minutes, now), highlight=snapshot["error_series"]
        ),
        slow_count=slow_request_count(),
    )


@panel_view
def routes(request: HttpRequest) -> HttpResponse:
    """Every route across the fleet (or one server), sortable, with a sparkline each."""
    minutes = _minutes(request)
    server = request.GET.get("server") or None
    snapshot = fleet_snapshot(minutes, server)
    sort = request.GET.get("sort", "requests")
    if sort not in ROUTE_SORTS:
        sort = "requests"
    key = ROUTE_SORTS[sort]
    rows = snapshot["routes"]
    if sort == "route":
        rows.sort(key=lambda r: r["route"])
    else:
        rows.sort(key=lambda r: (-(r[key] or 0), r["route"]))
    for row in rows:
        row["spark"] = sparkline(row["series"])
    return _page(
        request,
        "routes.html",
        "routes",
        minutes=minutes,
        rows=rows,
        sort=sort,
        server=server,
        servers=sorted(snapshot["servers"]),
        columns=[
            ("route", "Route"),
            ("requests", "Requests"),
            ("inflight", "In flight"),
            ("errors", "Errors"),
            ("p50", "p50"),
            ("p95", "p95"),
            ("p99", "p99"),
            ("mean", "Mean"),
            ("queries", "Queries"),
            ("limited", "Limited"),
        ],
    )


@panel_view
def slow(request: HttpRequest) -> HttpResponse:
    """The latest slow requests: their record, slowest queries, N+1 findings, profile."""
    entries = recent_slow_requests(get_settings().profiler.slow_keep or 50)
    route = request.GET.get("route")
    if route is not None:  # "" is the root pattern
        entries = [entry for entry in entries if entry.get("route") == route]
    for entry in entries:
        entry["when"] = _when(entry.get("at"))
        if isinstance(entry.get("nplusone"), int):  # written by perfkit < 0.x: a count
            entry["nplusone"] = []
    return _page(
        request,
        "slow.html",
        "slow",
        entries=entries,
        route=route,
        threshold=get_settings().profiler.slow_request_ms,
    )


@panel_view
def profiles(request: HttpRequest) -> HttpResponse:
    """The kept pyinstrument profiles, newest first."""
    found = recent_profiles(get_settings().profiler.max_profiles)
    for item in found:
        item["when"] = _when(item.get("at"))
    return _page(
        request,
        "profiles.html",
        "profiles",
        profiles=found,
        header=get_settings().profiler.header,
        ttl_minutes=get_settings().profiler.ttl // 60,
    )


@panel_view
def ratelimits(request: HttpRequest) -> HttpResponse:
    """Requests checked and blocked per rate-limit group, and per route."""
    minutes = _minutes(request)
    snapshot = fleet_snapshot(minutes)
    for group in snapshot["ratelimits"]:
        group["spark"] = sparkline(group["series"])
    limited_routes = [row for row in snapshot["routes"] if row["ratelimited"]]
    limited_routes.sort(key=lambda r: -r["ratelimited"])
    conf = get_settings()
    return _page(
        request,
        "ratelimits.html",
        "ratelimits",
        minutes=minutes,
        groups=snapshot["ratelimits"],
        limited_routes=limited_routes,
        rules=[rule for rule in conf.ratelimits if isinstance(rule, dict)],
        enabled=conf.ratelimit_enable,
    )


@panel_view
def database(request: HttpRequest) -> HttpResponse:
    """PostgreSQL: running queries, who blocks whom, sessions idle in a transaction."""
    conf = get_settings().panel
    alias = conf.database_alias
    try:
        rows = activity(alias, show_params=conf.show_sql_params)
    except NotPostgreSQL as error:
        return _page(request, "database.html", "database", unsupported=str(error), alias=alias)
    by_pid = {row["pid"]: row for row in rows}
    chains = [[by_pid.get(pid, {"pid": pid}) for pid in chain] for chain in blocking_chains(rows)]
    return _page(
        request,
        "database.html",
        "database",
        alias=alias,
        running=[row for row in rows if row["state"] == "active"],
        idle_in_transaction=sorted(
            (row for row in rows if str(row["state"]).startswith("idle in transaction")),
            key=lambda r: -(r["xact_seconds"] or 0),
        ),
        chains=chains,
        sessions=len(rows),
        can_signal=may_signal(request),
        show_params=conf.show_sql_params,
    )


@panel_view
@csrf_protect
def signal(request: HttpRequest) -> HttpResponse:
    """Cancel a query or end a session (POST, CSRF, superuser); asks first.

    The first POST shows what would be signalled and a second form to confirm
    it: no JavaScript ``confirm()`` needed.
    """
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    if not may_signal(request):
        raise Http404("Page not found.")
    action = request.POST.get("action", "")
    started = request.POST.get("backend_start") or None
    try:
        pid = int(request.POST.get("pid", ""))
    except ValueError:
        pid = -1
    if action not in SIGNALS or pid <= 0:
        return HttpResponse("Give action=cancel|terminate and a pid.", status=400)
    alias = get_settings().panel.database_alias
    show = get_settings().panel.show_sql_params
    try:
        target = [
            row
            for row in activity(alias, show_params=show)
            if row["pid"] == pid and started in (None, row["backend_start"])
        ]
    except NotPostgreSQL as error:
        return HttpResponse(str(error), status=400, content_type="text/plain")
    if request.POST.get("confirmed") != "1":
        return _page(
            request,
            "signal.html",
            "database",
            action=action,
            pid=pid,
            target=target[0] if target else None,
            refresh_seconds=0,  # a confirmation: nothing to refresh (and a POST-only URL)
        )
    try:
        done = signal_backend(alias, action, pid, started)  # type: ignore[arg-type]
    except LookupError:
        done = False
    return redirect(
        reverse("perfkit:database") + f"?signalled={pid}&action={action}&done={int(done)}"
    )


@panel_view
def panel_css(request: HttpRequest) -> HttpResponse:
    return HttpResponse(assets.CSS, content_type="text/css")


@panel_view
def panel_js(request: HttpRequest) -> HttpResponse:
    return HttpResponse(assets.JS, content_type="application/javascript")
