"""perfkit's settings: one ``PERFKIT`` dict, read lazily and cached.

Nothing here reads ``django.conf.settings`` at import time. The resolved view is
built on first use and thrown away on Django's ``setting_changed`` signal, so
``override_settings(PERFKIT=...)`` works in tests. Values are validated by the
system checks in :mod:`django_perfkit.checks` at startup; at request time the
resolved view takes what it is given and falls back to the default for a value
it cannot use, so a bad setting never turns into a 500.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Any, Final, Literal

ServerTimingMode = Literal["all", "staff", "internal", "staff_or_internal", "off"]
SERVER_TIMING_MODES: Final[tuple[str, ...]] = (
    "all",
    "staff",
    "internal",
    "staff_or_internal",
    "off",
)

#: Every ``PERFKIT`` key with its default. The configuration reference in
#: ``docs/configuration.md`` documents each of them; keep the two in step.
DEFAULTS: Final[dict[str, Any]] = {
    "ENABLED": True,
    # Redis gateway
    "REDIS_CACHE_ALIAS": "default",
    "REDIS_URL": None,
    "REDIS_CLUSTER": False,
    "KEY_PREFIX": "perfkit",
    "REDIS_CONNECT_TIMEOUT": 0.05,
    "REDIS_TIMEOUT": 0.05,
    "REDIS_SPIN": 0.0001,
    "BREAKER_FAILURES": 3,
    "BREAKER_COOLDOWN": 5.0,
    # Query collector
    "COLLECT_QUERIES": True,
    "MAX_QUERIES_RECORDED": 1000,
    "CAPTURE_CALL_SITES": True,
    "HIDE_SQL_PARAMS": True,
    # Reporters
    "SERVER_TIMING": "all",
    # Rate limits
    "RATELIMIT_ENABLE": True,
    "RATELIMITS": [],
    "RATELIMIT_ALGORITHM": "sliding",
    "RATELIMIT_FAIL": "open",
    "RATELIMIT_HEADERS": False,
    "RATELIMIT_LEGACY_HEADERS": False,
    "RATELIMIT_VIEW": None,
    "TRUSTED_PROXIES": [],
    "RATELIMIT_IPV4_MASK": 32,
    "RATELIMIT_IPV6_MASK": 64,
    # Queryset .cache(): a dict of its own, see CACHE_DEFAULTS
    "CACHE": {},
    # Query guard (budgets, N+1 detection): a dict of its own, see QUERY_GUARD_DEFAULTS
    "QUERY_GUARD": {},
    # Profiler (slow requests, debug-header profiles): see PROFILER_DEFAULTS
    "PROFILER": {},
    # Fleet stats (per route, per server, per minute, in Redis): see FLEET_DEFAULTS
    "FLEET": {},
    # Index advisor (EXPLAIN of slow queries): see INDEXES_DEFAULTS
    "INDEXES": {},
    # The web panel (perfkit/ URLs): see PANEL_DEFAULTS
    "PANEL": {},
}

#: Every ``PERFKIT["INDEXES"]`` key with its default.
INDEXES_DEFAULTS: Final[dict[str, Any]] = {
    # EXPLAIN (never ANALYZE) each distinct query shape that took this long, once.
    "ENABLED": True,
    "EXPLAIN_MS": 100,
    # A sequential scan is only worth an index on a table of at least this many rows.
    "MIN_ROWS": 10_000,
}


@dataclass(frozen=True, slots=True)
class IndexesSettings:
    """The resolved ``PERFKIT["INDEXES"]`` settings."""

    enabled: bool
    explain_ms: float
    min_rows: int
    #: What the collector compares each query's duration with (inf when off).
    explain_seconds: float


def _indexes_settings(raw: Any) -> IndexesSettings:
    if not isinstance(raw, dict):
        raw = {}
    enabled = raw.get("ENABLED", True)
    explain_ms = raw.get("EXPLAIN_MS", 100)
    min_rows = raw.get("MIN_ROWS", 10_000)
    number = isinstance(explain_ms, (int, float)) and not isinstance(explain_ms, bool)
    whole = isinstance(min_rows, int) and not isinstance(min_rows, bool)
    on = enabled if isinstance(enabled, bool) else True
    ms = float(explain_ms) if number and explain_ms >= 0 else 100.0
    return IndexesSettings(
        enabled=on,
        explain_ms=ms,
        min_rows=min_rows if whole and min_rows >= 0 else 10_000,
        explain_seconds=ms / 1000 if on else float("inf"),
    )


#: Every ``PERFKIT["FLEET"]`` key with its default.
FLEET_DEFAULTS: Final[dict[str, Any]] = {
    # Record per-route stats of every request (in memory; flushed to Redis).
    "ENABLED": True,
    # Minutes of per-minute buckets kept in Redis.
    "WINDOW_MINUTES": 60,
    # Seconds between two flushes of a process's counters (one pipeline each).
    "FLUSH_INTERVAL": 1.0,
    # Routes per server and minute, at most (the rest count as "(other)").
    "MAX_ROUTES": 500,
}


@dataclass(frozen=True, slots=True)
class FleetSettings:
    """The resolved ``PERFKIT["FLEET"]`` settings."""

    enabled: bool
    window_minutes: int
    flush_interval: float
    max_routes: int


def _fleet_settings(raw: Any) -> FleetSettings:
    if not isinstance(raw, dict):
        raw = {}
    enabled = raw.get("ENABLED", True)
    window = raw.get("WINDOW_MINUTES", 60)
    interval = raw.get("FLUSH_INTERVAL", 1.0)
    routes = raw.get("MAX_ROUTES", 500)

    def whole(value: Any, default: int) -> int:
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        return value if ok else default

    ok_interval = isinstance(interval, (int, float)) and not isinstance(interval, bool)
    return FleetSettings(
        enabled=enabled if isinstance(enabled, bool) else True,
        window_minutes=whole(window, 60),
        flush_interval=float(interval) if ok_interval and interval > 0 else 1.0,
        max_routes=whole(routes, 500),
    )


#: Every ``PERFKIT["PANEL"]`` key with its default.
PANEL_DEFAULTS: Final[dict[str, Any]] = {
    # Who may open the panel: None = active staff users; "app_label.codename" =
    # active users with that permission (superusers have every permission).
    # Anyone else gets a 404.
    "PERMISSION": None,
    # Who may cancel a query or end a session from the Database page: None =
    # active superusers; or a permission, as above (and panel access).
    "SIGNAL_PERMISSION": None,
    # Show SQL with its literal values (user data) on the Database page.
    "SHOW_SQL_PARAMS": False,
    # Seconds between two refreshes of a page (vanilla JS; 0: no auto-refresh;
    # at least 1 otherwise: each refresh reads Redis).
    "REFRESH_SECONDS": 5,
    # Minutes of fleet stats a page shows unless ?minutes= says otherwise.
    "MINUTES": 15,
    # The database whose pg_stat_activity the Database page shows.
    "DATABASE_ALIAS": "default",
}


@dataclass(frozen=True, slots=True)
class PanelSettings:
    """The resolved ``PERFKIT["PANEL"]`` settings."""

    permission: str | None
    signal_permission: str | None
    show_sql_params: bool
    refresh_seconds: float
    minutes: int
    database_alias: str


def _panel_settings(raw: Any) -> PanelSettings:
    if not isinstance(raw, dict):
        raw = {}

    def permission(name: str) -> str | None:
        value = raw.get(name)
        return value if isinstance(value, str) and "." in value else None

    refresh = raw.get("REFRESH_SECONDS", 5)
    minutes = raw.get("MINUTES", 15)
    alias = raw.get("DATABASE_ALIAS", "default")
    show = raw.get("SHOW_SQL_PARAMS", False)
    return PanelSettings(
        permission=permission("PERMISSION"),
        signal_permission=permission("SIGNAL_PERMISSION"),
        show_sql_params=show is True,
        refresh_seconds=(
            float(refresh)
            if isinstance(refresh, (int, float))
            and not isinstance(refresh, bool)
            and (refresh == 0 or refresh >= 1)
            else 5.0
        ),  # fmt: skip
        minutes=(
            minutes
            if isinstance(minutes, int) and not isinstance(minutes, bool) and minutes > 0
            else 15
        ),
        database_alias=alias if isinstance(alias, str) and alias else "default",
    )


#: Every ``PERFKIT["PROFILER"]`` key with its default.
PROFILER_DEFAULTS: Final[dict[str, Any]] = {
    # A request at least this slow gets one structured log line, and its
    # summary is kept in Redis for the panel. 0 turns both off.
    "SLOW_REQUEST_MS": 1000,
    # How many slow-request summaries Redis keeps (newest first).
    "SLOW_KEEP": 200,
    # The request header that asks for a pyinstrument profile. "" turns it off.
    "HEADER": "X-Perfkit-Profile",
    # pyinstrument's sampling interval, in seconds.
    "INTERVAL": 0.001,
    # Profiles kept in Redis: at most this many, each for at most TTL seconds.
    "MAX_PROFILES": 50,
    "TTL": 3600,
    # One profile per caller per this many seconds (the header cannot load the servers).
    "MIN_INTERVAL": 10.0,
    # The longest a token from manage.py perfkit_token may live, in seconds.
    "TOKEN_MAX_TTL": 86_400,
    # Profile 1 in N requests of a route that was slow in the last 10 minutes
    # (in this process), and keep the profile if the request is slow again.
    # 0: off. Each sampled route gets at most one profile per MIN_INTERVAL.
    "SAMPLE_SLOW": 0,
}


@dataclass(frozen=True, slots=True)
class ProfilerSettings:
    """The resolved ``PERFKIT["PROFILER"]`` settings."""

    slow_request_ms: int
    slow_keep: int
    header: str
    interval: float
    max_profiles: int
    ttl: int
    min_interval: float
    token_max_ttl: int
    sample_slow: int


def _profiler_settings(raw: Any) -> ProfilerSettings:
    if not isinstance(raw, dict):
        raw = {}
    values: dict[str, Any] = {}
    for name, default in PROFILER_DEFAULTS.items():
        value = raw.get(name, default)
        if name == "HEADER":
            value = value if isinstance(value, str) else default
        elif name in ("INTERVAL", "MIN_INTERVAL"):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
            value = float(value) if ok else default
            if name == "INTERVAL" and value <= 0:
                value = default
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            value = value if ok else default
        values[name.lower()] = value
    return ProfilerSettings(**values)


QueryGuardMode = Literal["log", "warn", "raise", "off"]
QUERY_GUARD_MODES: Final[tuple[str, ...]] = ("log", "warn", "raise", "off")

#: Every ``PERFKIT["QUERY_GUARD"]`` key with its default.
QUERY_GUARD_DEFAULTS: Final[dict[str, Any]] = {
    # What PerfkitMiddleware does with a request's findings and budget overruns:
    # "log", "warn" (log + X-Perfkit-Queries header), "raise" or "off" (no N+1
    # detection at all). None: "raise" when DEBUG is on or under tests, else "log".
    "MODE": None,
    # How many repeats of one lazy load or query shape, from one place, make an N+1.
    "NPLUSONE_THRESHOLD": 2,
    # A budget for every request (None: none); @query_budget sets one per view.
    "MAX_QUERIES": None,
    "MAX_DUPLICATES": None,
    # Report prefetch_related() lookups nothing read.
    "UNUSED_PREFETCHES": True,
    # Findings not to act on: [{"relation": "news.Article.author"},
    # {"location": "news/legacy.py:*"}, {"fingerprint": "SELECT ... FROM \"news_tag\"*"}]
    # (shell-style patterns; every key of an entry must match).
    "ALLOWLIST": [],
}


@dataclass(frozen=True, slots=True)
class QueryGuardSettings:
    """The resolved ``PERFKIT["QUERY_GUARD"]`` settings."""

    #: As configured (``None``: decided per request by :meth:`effective_mode`).
    mode: QueryGuardMode | None
    nplusone_threshold: int
    max_queries: int | None
    max_duplicates: int | None
    unused_prefetches: bool
    allowlist: tuple[dict[str, str], ...]

    def effective_mode(self) -> QueryGuardMode:
        """The mode now: the configured one, or raise under DEBUG and tests, else log."""
        if self.mode is not None:
            return self.mode
        from django.conf import settings

        return "raise" if settings.DEBUG or _under_tests() else "log"


def _under_tests() -> bool:
    # setup_test_environment() (Django's runner, pytest-django) records what it
    # changed on django.test.utils._TestState until teardown_test_environment().
    # (Not mail.outbox: the locmem email backend creates that in production too.)
    # The module is imported only if something imported it already.
    import sys

    utils = sys.modules.get("django.test.utils")
    state = getattr(utils, "_TestState", None) if utils is not None else None
    return state is not None and hasattr(state, "saved_data")


def _query_guard_settings(raw: Any) -> QueryGuardSettings:
    if not isinstance(raw, dict):
        raw = {}
    mode = raw.get("MODE")
    threshold = raw.get("NPLUSONE_THRESHOLD", 2)
    allowlist = raw.get("ALLOWLIST", [])

    def budget(name: str) -> int | None:
        value = raw.get(name)
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        return value if ok else None

    return QueryGuardSettings(
        mode=mode if mode in QUERY_GUARD_MODES else None,
        nplusone_threshold=threshold
        if isinstance(threshold, int) and not isinstance(threshold, bool) and threshold >= 2
        else 2,
        max_queries=budget("MAX_QUERIES"),
        max_duplicates=budget("MAX_DUPLICATES"),
        unused_prefetches=raw.get("UNUSED_PREFETCHES", True) is not False,
        allowlist=tuple(
            {str(k): str(v) for k, v in entry.items()}
            for entry in (allowlist if isinstance(allowlist, (list, tuple)) else ())
            if isinstance(entry, dict)
        ),
    )


#: Every ``PERFKIT["CACHE"]`` key with its default (the queryset ``.cache()``).
CACHE_DEFAULTS: Final[dict[str, Any]] = {
    # Off: .cache() querysets run uncached. Writes still bump version tokens,
    # so turning it back on never serves an entry older than a write.
    "ENABLED": True,
    # Seconds an entry lives when .cache() is given no timeout.
    "DEFAULT_TIMEOUT": 300,
    # {"app_label.ModelName": timeout}: querysets of these models (through a
    # CachedManager / CachedQuerySetMixin) are cached without calling .cache().
    "MODELS": {},
    # Results whose pickle is larger than this are not stored (counted as skipped).
    "MAX_BYTES": 1_048_576,
    # Single flight: how long the first miss holds its lock, and how long the
    # others wait for its result before they query the database themselves.
    "LOCK_TIMEOUT": 10.0,
    "LOCK_WAIT": 1.0,
    # XFetch early refresh (Vattani et al. 2015): beta; 0 turns it off.
    "EARLY_REFRESH_BETA": 1.0,
    # Version tokens live this long at least (and at least twice an entry's timeout).
    # Also the lifetime of a @cached_on_write entry stored with timeout=None.
    "TOKEN_TTL": 86_400,
    # @cached_on_write(defer=True): seconds a key waits for more writes before
    # its one recompute, and how many keys may wait (beyond: invalidate only).
    "DEFER_DELAY": 0.1,
    "DEFER_MAX_PENDING": 10_000,
}


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """The resolved ``PERFKIT["CACHE"]`` settings."""

    enabled: bool
    default_timeout: int
    #: ``"app_label.modelname"`` (lower case) -> timeout in seconds.
    models: dict[str, int]
    max_bytes: int
    lock_timeout: float
    lock_wait: float
    early_refresh_beta: float
    token_ttl: int
    defer_delay: float
    defer_max_pending: int


def _cache_settings(raw: Any) -> CacheSettings:
    if not isinstance(raw, dict):
        raw = {}
    values: dict[str, Any] = {}
    for name, default in CACHE_DEFAULTS.items():
        value = raw.get(name, default)
        if name == "MODELS":
            ok = isinstance(value, dict)
            value = {
                str(label).lower(): timeout
                for label, timeout in (value.items() if ok else ())
                if isinstance(timeout, int) and not isinstance(timeout, bool) and timeout > 0
            }
        elif name == "DEFAULT_TIMEOUT":
            ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
            value = value if ok else default
        else:
            value = _coerce(name, value, default)
        values[name.lower()] = value
    return CacheSettings(**values)


RATELIMIT_ALGORITHMS: Final[tuple[str, ...]] = ("sliding", "gcra", "fixed")
RATELIMIT_FAIL_MODES: Final[tuple[str, ...]] = ("open", "closed")


@dataclass(frozen=True, slots=True)
class PerfkitSettings:
    """The resolved ``PERFKIT`` settings: defaults merged with the project's dict."""

    enabled: bool
    redis_cache_alias: str | None
    redis_url: str | None
    redis_cluster: bool
    key_prefix: str
    redis_connect_timeout: float
    redis_timeout: float
    redis_spin: float
    breaker_failures: int
    breaker_cooldown: float
    collect_queries: bool
    max_queries_recorded: int
    capture_call_sites: bool
    hide_sql_params: bool
    server_timing: ServerTimingMode
    ratelimit_enable: bool
    ratelimits: tuple[Any, ...]
    ratelimit_algorithm: str
    ratelimit_fail: str
    ratelimit_headers: bool
    ratelimit_legacy_headers: bool
    ratelimit_view: str | None
    trusted_proxies: tuple[str, ...]
    ratelimit_ipv4_mask: int
    ratelimit_ipv6_mask: int
    cache: CacheSettings
    query_guard: QueryGuardSettings
    profiler: ProfilerSettings
    fleet: FleetSettings
    indexes: IndexesSettings
    panel: PanelSettings
    #: True when the project set ``REDIS_CACHE_ALIAS`` itself (the checks are
    #: stricter about an explicit alias than about the default one).
    redis_alias_explicit: bool


def raw_settings() -> Any:
    """The ``PERFKIT`` setting as the project wrote it (``{}`` when absent)."""
    from django.conf import settings

    return getattr(settings, "PERFKIT", {})


def _coerce(name: str, value: Any, default: Any) -> Any:
    # Runtime leniency: the checks report bad values at startup; here a value of
    # the wrong type falls back to the default rather than raising mid-request.
    if default is None:
        return value if value is None or isinstance(value, str) else default
    if isinstance(default, list):
        return tuple(value) if isinstance(value, (list, tuple)) else ()
    if name == "RATELIMIT_ALGORITHM":
        return value if value in RATELIMIT_ALGORITHMS else default
    if name == "RATELIMIT_FAIL":
        return value if value in RATELIMIT_FAIL_MODES else default
    if isinstance(default, bool):
        return value if isinstance(value, bool) else default
    if isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        return value if ok else default
    if isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
        return float(value) if ok else default
    if name == "SERVER_TIMING":
        return value if value in SERVER_TIMING_MODES else default
    if name == "REDIS_CACHE_ALIAS":
        return value if value is None or isinstance(value, str) else default
    return value if isinstance(value, type(default)) else default


@functools.cache
def get_settings() -> PerfkitSettings:
    """The resolved settings, built once and cached until a setting changes."""
    raw = raw_settings()
    if not isinstance(raw, dict):
        raw = {}
    values: dict[str, Any] = {}
    for name, default in DEFAULTS.items():
        if name == "CACHE":
            values["cache"] = _cache_settings(raw.get(name))
            continue
        if name == "QUERY_GUARD":
            values["query_guard"] = _query_guard_settings(raw.get(name))
            continue
        if name == "PROFILER":
            values["profiler"] = _profiler_settings(raw.get(name))
            continue
        if name == "FLEET":
            values["fleet"] = _fleet_settings(raw.get(name))
            continue
        if name == "INDEXES":
            values["indexes"] = _indexes_settings(raw.get(name))
            continue
        if name == "PANEL":
            values["panel"] = _panel_settings(raw.get(name))
            continue
        values[name.lower()] = _coerce(name, raw.get(name, default), default)
    values["redis_alias_explicit"] = "REDIS_CACHE_ALIAS" in raw
    # django-ratelimit's own switch, honoured so that test settings with
    # RATELIMIT_ENABLE = False keep working after switching the import. Read
    # here, once: a missing attribute costs LazySettings an exception, which
    # was most of a check's Python time when read per request.
    from django.conf import settings

    values["ratelimit_enable"] = values["ratelimit_enable"] and bool(
        getattr(settings, "RATELIMIT_ENABLE", True)
    )
    assert {f.name for f in fields(PerfkitSettings)} == set(values)
    return PerfkitSettings(**values)


def reset(**kwargs: Any) -> None:
    """Forget the cached settings (and everything built from them).

    Connected to ``setting_changed``; called with no arguments it resets all.
    """
    setting = kwargs.get("setting")
    if setting is not None and setting not in (
        "PERFKIT",
        "CACHES",
        "INTERNAL_IPS",
        "RATELIMIT_ENABLE",
    ):
        return
    get_settings.cache_clear()
    # Objects built from the settings (the Redis gateway) are rebuilt lazily.
    from django_perfkit import redis as perfkit_redis

    perfkit_redis.reset_gateway()
    from django_perfkit.versions import tokens

    tokens.reset_state()
    from django_perfkit.collectors import db

    db.reset_plan()
