"""System checks for the ``PERFKIT`` setting.

They run with ``manage.py check``, ``migrate`` and ``runserver``, so a typo
fails the deploy instead of the request. Ids are stable: documentation and
``SILENCED_SYSTEM_CHECKS`` refer to them.

========  =====================================================================
id        what
========  =====================================================================
E001      ``PERFKIT`` is not a dict
E002      ``REDIS_CACHE_ALIAS`` names no cache in ``CACHES``
E003      ``REDIS_CACHE_ALIAS`` names a cache that is not a django-redis cache
E004      a timeout or cool-down is not a number >= 0
E005      ``SERVER_TIMING`` is not a known mode
E006      a switch is not ``True``/``False``
E007      a count is not a whole number >= 0 (or >= 1)
E008      ``REDIS_URL`` is not a redis://, rediss:// or unix:// URL
E009      ``KEY_PREFIX`` is empty or contains spaces or braces
E010      ``REDIS_CLUSTER`` is on but ``REDIS_URL`` is not set
E011      ``RATELIMITS`` is not a list, or one of its rules is malformed
E012      ``RATELIMIT_ALGORITHM`` or ``RATELIMIT_FAIL`` is not a known value
E013      ``TRUSTED_PROXIES`` has an entry that is not an IP address or CIDR
E014      ``RATELIMIT_IPV4_MASK`` / ``RATELIMIT_IPV6_MASK`` is out of range
E015      ``RATELIMIT_VIEW`` cannot be imported or is not callable
E016      ``CACHE`` is not a dict, or one of its values is of the wrong kind
E017      ``CACHE["MODELS"]`` names a model that does not exist
E018      ``QUERY_GUARD`` is not a dict, or one of its values is of the wrong kind
E019      ``PROFILER`` is not a dict, or one of its values is of the wrong kind
E020      ``FLEET`` is not a dict, or one of its values is of the wrong kind
E021      ``INDEXES`` is not a dict, or one of its values is of the wrong kind
E022      ``PANEL`` is not a dict, one of its values is of the wrong kind, or its
          ``DATABASE_ALIAS`` names no database
W005      ``CACHE["MODELS"]`` names a model whose managers have no ``.cache()``
W006      ``CACHE`` has a key perfkit does not know (a typo?)
W007      ``QUERY_GUARD`` has a key perfkit does not know (a typo?)
W008      ``PROFILER`` has a key perfkit does not know (a typo?)
W009      ``FLEET`` has a key perfkit does not know (a typo?)
W010      ``INDEXES`` has a key perfkit does not know (a typo?)
W011      ``PANEL`` has a key perfkit does not know (a typo?)
W001      ``PERFKIT`` has a key perfkit does not know (a typo?)
W002      ``PerfkitMiddleware`` is not in ``MIDDLEWARE``
W003      ``PerfkitMiddleware`` is not first in ``MIDDLEWARE``
W004      the default cache is not django-redis and perfkit was not told to run without Redis
========  =====================================================================
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.utils.module_loading import import_string

from django_perfkit.conf import (
    CACHE_DEFAULTS,
    DEFAULTS,
    FLEET_DEFAULTS,
    INDEXES_DEFAULTS,
    PANEL_DEFAULTS,
    PROFILER_DEFAULTS,
    QUERY_GUARD_DEFAULTS,
    QUERY_GUARD_MODES,
    RATELIMIT_ALGORITHMS,
    RATELIMIT_FAIL_MODES,
    SERVER_TIMING_MODES,
)
from django_perfkit.redis.gateway import is_django_redis_backend

MIDDLEWARE_PATH = "django_perfkit.middleware.PerfkitMiddleware"

_TIMEOUTS = ("REDIS_CONNECT_TIMEOUT", "REDIS_TIMEOUT", "REDIS_SPIN", "BREAKER_COOLDOWN")
_SWITCHES = (
    "ENABLED",
    "REDIS_CLUSTER",
    "COLLECT_QUERIES",
    "CAPTURE_CALL_SITES",
    "HIDE_SQL_PARAMS",
    "RATELIMIT_ENABLE",
    "RATELIMIT_HEADERS",
    "RATELIMIT_LEGACY_HEADERS",
)
_COUNTS = {"MAX_QUERIES_RECORDED": 0, "BREAKER_FAILURES": 1}


@register(Tags.compatibility)
def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    raw = getattr(settings, "PERFKIT", {})
    if not isinstance(raw, dict):
        return [
            Error(
                f"PERFKIT must be a dict, not {type(raw).__name__}.",
                hint='Write PERFKIT = {"SERVER_TIMING": "all", ...} in your settings, '
                "or remove it to use the defaults.",
                id="perfkit.E001",
            )
        ]
    errors: list[CheckMessage] = []

    for key in raw:
        if key not in DEFAULTS:
            close = difflib.get_close_matches(str(key), list(DEFAULTS), n=1)
            hint = (
                f'Did you mean "{close[0]}"?'
                if close
                else ("See the configuration reference for the keys perfkit reads.")
            )
            errors.append(
                Warning(f'PERFKIT has an unknown key "{key}".', hint=hint, id="perfkit.W001")
            )

    errors += _check_redis(raw)

    for name in _TIMEOUTS:
        if name in raw:
            value = raw[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                errors.append(
                    Error(
                        f'PERFKIT["{name}"] must be a number of seconds >= 0, not {value!r}.',
                        hint=f'Write for example PERFKIT["{name}"] = {DEFAULTS[name]!r}.',
                        id="perfkit.E004",
                    )
                )

    mode = raw.get("SERVER_TIMING", DEFAULTS["SERVER_TIMING"])
    if mode not in SERVER_TIMING_MODES:
        errors.append(
            Error(
                f'PERFKIT["SERVER_TIMING"] is {mode!r}, which is not a mode perfkit knows.',
                hint="Use one of: " + ", ".join(f'"{m}"' for m in SERVER_TIMING_MODES) + ".",
                id="perfkit.E005",
            )
        )

    for name in _SWITCHES:
        if name in raw and not isinstance(raw[name], bool):
            errors.append(
                Error(
                    f'PERFKIT["{name}"] must be True or False, not {raw[name]!r}.',
                    hint=f'Write PERFKIT["{name}"] = {DEFAULTS[name]!r} (a bool, not a string).',
                    id="perfkit.E006",
                )
            )

    for name, minimum in _COUNTS.items():
        if name in raw:
            value = raw[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                errors.append(
                    Error(
                        f'PERFKIT["{name}"] must be a whole number >= {minimum}, not {value!r}.',
                        hint=f'Write for example PERFKIT["{name}"] = {DEFAULTS[name]!r}.',
                        id="perfkit.E007",
                    )
                )

    errors += _check_ratelimits(raw)
    errors += _check_cache(raw)
    errors += _check_query_guard(raw)
    errors += _check_profiler(raw)
    errors += _check_fleet(raw)
    errors += _check_indexes(raw)
    errors += _check_panel(raw)

    prefix = raw.get("KEY_PREFIX", DEFAULTS["KEY_PREFIX"])
    if not isinstance(prefix, str) or not prefix or any(c in prefix for c in " {}\t\n"):
        errors.append(
            Error(
                f'PERFKIT["KEY_PREFIX"] is {prefix!r}; it must be a non-empty string with '
                "no spaces or braces (braces would break perfkit's Redis Cluster hash tags).",
                hint='Write for example PERFKIT["KEY_PREFIX"] = "mysite-perfkit".',
                id="perfkit.E009",
            )
        )
    return errors


def _check_redis(raw: dict[str, Any]) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    url = raw.get("REDIS_URL")
    if url is not None:
        scheme = urlsplit(url).scheme if isinstance(url, str) else None
        if scheme not in ("redis", "rediss", "unix"):
            errors.append(
                Error(
                    f'PERFKIT["REDIS_URL"] is {url!r}, which is not a Redis URL.',
                    hint='Write for example PERFKIT["REDIS_URL"] = "redis://10.0.0.5:6379/0" '
                    "(redis://, rediss:// or unix://), or remove it to use REDIS_CACHE_ALIAS.",
                    id="perfkit.E008",
                )
            )
    elif raw.get("REDIS_CLUSTER") is True:
        errors.append(
            Error(
                'PERFKIT["REDIS_CLUSTER"] is True but PERFKIT["REDIS_URL"] is not set.',
                hint='Point perfkit at one node of the cluster: PERFKIT["REDIS_URL"] = '
                '"redis://10.0.0.5:7000/0".',
                id="perfkit.E010",
            )
        )
    if url is not None:
        return errors  # perfkit's own keys live at REDIS_URL; the alias is not used

    caches = getattr(settings, "CACHES", {})
    explicit = "REDIS_CACHE_ALIAS" in raw
    alias = raw.get("REDIS_CACHE_ALIAS", DEFAULTS["REDIS_CACHE_ALIAS"])
    if alias is None:
        return errors
    if alias not in caches:
        errors.append(
            Error(
                f'PERFKIT["REDIS_CACHE_ALIAS"] is {alias!r}, but CACHES has no such cache '
                f"(it has: {', '.join(map(repr, caches)) or 'none'}).",
                hint="Name a django-redis cache from CACHES, or set "
                'PERFKIT["REDIS_CACHE_ALIAS"] = None to run perfkit without Redis.',
                id="perfkit.E002",
            )
        )
        return errors
    backend = caches[alias].get("BACKEND")
    if not is_django_redis_backend(backend):
        if explicit:
            errors.append(
                Error(
                    f'PERFKIT["REDIS_CACHE_ALIAS"] is {alias!r}, whose BACKEND {backend!r} '
                    "is not django-redis.",
                    hint='Use BACKEND "django_redis.cache.RedisCache" for that cache, name '
                    'another cache, or set PERFKIT["REDIS_URL"] for perfkit\'s own keys.',
                    id="perfkit.E003",
                )
            )
        else:
            errors.append(
                Warning(
                    f"The {alias!r} cache ({backend}) is not a django-redis cache, so perfkit "
                    "runs without Redis: each feature that needs Redis degrades as documented.",
                    hint='Configure a django-redis cache and set PERFKIT["REDIS_CACHE_ALIAS"] '
                    'to its alias, or set PERFKIT["REDIS_CACHE_ALIAS"] = None to say that '
                    "this is intended.",
                    id="perfkit.W004",
                )
            )
    return errors


def _check_ratelimits(raw: dict[str, Any]) -> list[CheckMessage]:
    import ipaddress

    from django_perfkit.ratelimit.core import InvalidLimit
    from django_perfkit.ratelimit.rules import build_rule

    errors: list[CheckMessage] = []
    rules = raw.get("RATELIMITS", [])
    if not isinstance(rules, (list, tuple)):
        errors.append(
            Error(
                f'PERFKIT["RATELIMITS"] must be a list of rules, not {type(rules).__name__}.',
                hint='Write PERFKIT["RATELIMITS"] = [{"path": "/api/", "rate": "100/m"}].',
                id="perfkit.E011",
            )
        )
        rules = []
    for index, spec in enumerate(rules):
        try:
            build_rule(spec)
        except InvalidLimit as exc:
            errors.append(
                Error(
                    f'PERFKIT["RATELIMITS"][{index}]: {exc}.',
                    hint='A rule looks like {"path": "/api/", "rate": "100/m", '
                    '"key": "user_or_ip", "method": "GET"}.',
                    id="perfkit.E011",
                )
            )
    for name, allowed in (
        ("RATELIMIT_ALGORITHM", RATELIMIT_ALGORITHMS),
        ("RATELIMIT_FAIL", RATELIMIT_FAIL_MODES),
    ):
        if name in raw and raw[name] not in allowed:
            errors.append(
                Error(
                    f'PERFKIT["{name}"] is {raw[name]!r}, which perfkit does not know.',
                    hint="Use one of: " + ", ".join(f'"{a}"' for a in allowed) + ".",
                    id="perfkit.E012",
                )
            )
    proxies = raw.get("TRUSTED_PROXIES", [])
    if not isinstance(proxies, (list, tuple)):
        errors.append(
            Error(
                f'PERFKIT["TRUSTED_PROXIES"] must be a list, not {type(proxies).__name__}: '
                "a single string would be ignored and every client would share your "
                "proxy's identity.",
                hint=f'Write PERFKIT["TRUSTED_PROXIES"] = [{proxies!r}].',
                id="perfkit.E013",
            )
        )
        proxies = []
    for proxy in proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except (TypeError, ValueError):
            errors.append(
                Error(
                    f'PERFKIT["TRUSTED_PROXIES"] has {proxy!r}, which is not an IP address '
                    "or network.",
                    hint='List your own proxies\' addresses, e.g. ["10.0.0.0/8", "::1"].',
                    id="perfkit.E013",
                )
            )
    for name, top in (("RATELIMIT_IPV4_MASK", 32), ("RATELIMIT_IPV6_MASK", 128)):
        if name in raw:
            value = raw[name]
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= top:
                errors.append(
                    Error(
                        f'PERFKIT["{name}"] must be a prefix length from 1 to {top}, '
                        f"not {value!r}.",
                        hint=f'Write for example PERFKIT["{name}"] = {DEFAULTS[name]}.',
                        id="perfkit.E014",
                    )
                )
    view = raw.get("RATELIMIT_VIEW")
    if view is not None:
        try:
            ok = callable(import_string(view))
        except (ImportError, TypeError, ValueError):
            ok = False
        if not ok:
            errors.append(
                Error(
                    f'PERFKIT["RATELIMIT_VIEW"] is {view!r}, which cannot be imported as a view.',
                    hint="Give the dotted path of a function view(request, exception).",
                    id="perfkit.E015",
                )
            )
    return errors


@register(Tags.compatibility)
def check_middleware(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    middleware = list(getattr(settings, "MIDDLEWARE", None) or [])
    if MIDDLEWARE_PATH not in middleware:
        return [
            Warning(
                "PerfkitMiddleware is not in MIDDLEWARE, so no request is measured.",
                hint=f'Add "{MIDDLEWARE_PATH}" as the first entry of MIDDLEWARE.',
                id="perfkit.W002",
            )
        ]
    if middleware[0] != MIDDLEWARE_PATH:
        return [
            Warning(
                f"PerfkitMiddleware comes after {middleware[0]!r} in MIDDLEWARE, so that "
                "middleware's time and queries are not measured.",
                hint=f'Move "{MIDDLEWARE_PATH}" to the top of MIDDLEWARE.',
                id="perfkit.W003",
            )
        ]
    return []


#: The kinds of value a sub-dict's keys take: (what the message says it must
#: be, the test).
_VALUE_KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "bool": ("True or False", lambda v: isinstance(v, bool)),
    "count": (
        "a whole number >= 0",
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    ),
    "count>0": (
        "a whole number > 0",
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
    ),
    "whole-seconds>0": (
        "a whole number of seconds > 0",
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
    ),
    "seconds": ("a number >= 0", lambda v: _is_number(v) and v >= 0),
    "seconds>0": ("a number of seconds > 0", lambda v: _is_number(v) and v > 0),
    "refresh": (
        "0 (off) or a number of seconds >= 1",
        lambda v: _is_number(v) and (v == 0 or v >= 1),
    ),
    "permission": (
        'None or a permission "app_label.codename"',
        lambda v: v is None or (isinstance(v, str) and v.count(".") == 1 and " " not in v),
    ),
}


def _check_section(
    raw: dict[str, Any],
    name: str,
    defaults: dict[str, Any],
    kinds: dict[str, tuple[str, str]],
    error_id: str,
    warning_id: str,
    example: str,
) -> tuple[dict[str, Any] | None, list[CheckMessage]]:
    """The checks every ``PERFKIT`` sub-dict gets: a dict, known keys, values of their kind.

    Returns the section (``None`` when absent or not a dict) and the messages.
    """
    if name not in raw:
        return None, []
    section = raw[name]
    if not isinstance(section, dict):
        return None, [
            Error(
                f'PERFKIT["{name}"] must be a dict, not {type(section).__name__}.',
                hint=f'Write PERFKIT["{name}"] = {example}, or leave it out.',
                id=error_id,
            )
        ]
    errors: list[CheckMessage] = []
    for key in section:
        if key not in defaults:
            close = difflib.get_close_matches(str(key), list(defaults), n=1)
            errors.append(
                Warning(
                    f'PERFKIT["{name}"] has an unknown key "{key}".',
                    hint=f'Did you mean "{close[0]}"?'
                    if close
                    else f"See the configuration reference for the keys of {name}.",
                    id=warning_id,
                )
            )
    for key, (kind, value_example) in kinds.items():
        what, ok = _VALUE_KINDS[kind]
        if key in section and not ok(section[key]):
            errors.append(
                Error(
                    f'PERFKIT["{name}"]["{key}"] must be {what}, not {section[key]!r}.',
                    hint=f'Write for example PERFKIT["{name}"]["{key}"] = {value_example}.',
                    id=error_id,
                )
            )
    return section, errors


_CACHE_KINDS: dict[str, tuple[str, str]] = {
    # key: (kind, example)
    "ENABLED": ("bool", "True"),
    "DEFAULT_TIMEOUT": ("whole-seconds>0", "300"),
    "MAX_BYTES": ("count", "1048576"),
    "LOCK_TIMEOUT": ("seconds", "10.0"),
    "LOCK_WAIT": ("seconds", "1.0"),
    "EARLY_REFRESH_BETA": ("seconds", "1.0"),
    "TOKEN_TTL": ("whole-seconds>0", "86400"),
    "DEFER_DELAY": ("seconds", "0.1"),
    "DEFER_MAX_PENDING": ("count", "10000"),
}


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _check_cache(raw: dict[str, Any]) -> list[CheckMessage]:
    cache, errors = _check_section(
        raw,
        "CACHE",
        CACHE_DEFAULTS,
        _CACHE_KINDS,
        "perfkit.E016",
        "perfkit.W006",
        '{"DEFAULT_TIMEOUT": 300, ...}',
    )
    if cache is None:
        return errors
    models = cache.get("MODELS", {})
    if not isinstance(models, dict):
        errors.append(
            Error(
                'PERFKIT["CACHE"]["MODELS"] must be a dict of "app_label.ModelName" to seconds.',
                hint='Write for example {"news.Category": 600}.',
                id="perfkit.E016",
            )
        )
        return errors
    for label, timeout in models.items():
        errors += _check_cached_model(label, timeout)
    return errors


def _check_cached_model(label: Any, timeout: Any) -> list[CheckMessage]:
    from django.apps import apps

    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
        return [
            Error(
                f'PERFKIT["CACHE"]["MODELS"]["{label}"] must be a whole number of seconds > 0, '
                f"not {timeout!r}.",
                hint=f'Write for example "{label}": 300.',
                id="perfkit.E016",
            )
        ]
    try:
        model = apps.get_model(str(label))
    except (LookupError, ValueError):
        return [
            Error(
                f'PERFKIT["CACHE"]["MODELS"] names "{label}", which is not an installed model.',
                hint='Use "app_label.ModelName", as in INSTALLED_APPS (e.g. "news.Article").',
                id="perfkit.E017",
            )
        ]
    from django_perfkit.cache.queryset import CachedQuerySetMixin

    managers = [getattr(m, "_queryset_class", None) for m in model._meta.managers]
    if not any(isinstance(q, type) and issubclass(q, CachedQuerySetMixin) for q in managers):
        return [
            Warning(
                f'PERFKIT["CACHE"]["MODELS"] names "{label}", but no manager of it has '
                ".cache(), so nothing of it is cached.",
                hint="Give the model objects = CachedManager() (from django_perfkit.cache), or "
                "mix CachedQuerySetMixin into its queryset class.",
                id="perfkit.W005",
            )
        ]
    return []


_ALLOWLIST_KEYS = ("relation", "location", "fingerprint", "model")


_QUERY_GUARD_KINDS: dict[str, tuple[str, str]] = {"UNUSED_PREFETCHES": ("bool", "True")}


def _check_query_guard(raw: dict[str, Any]) -> list[CheckMessage]:
    guard, errors = _check_section(
        raw,
        "QUERY_GUARD",
        QUERY_GUARD_DEFAULTS,
        _QUERY_GUARD_KINDS,
        "perfkit.E018",
        "perfkit.W007",
        '{"MODE": "log", ...}',
    )
    if guard is None:
        return errors

    def error(message: str, hint: str) -> None:
        errors.append(Error(f'PERFKIT["QUERY_GUARD"]{message}', hint=hint, id="perfkit.E018"))

    mode = guard.get("MODE")
    if mode is not None and mode not in QUERY_GUARD_MODES:
        error(
            f'["MODE"] is {mode!r}.',
            "Write one of " + ", ".join(f'"{m}"' for m in QUERY_GUARD_MODES) + ", or None "
            "(raise under DEBUG and tests, log otherwise).",
        )
    threshold = guard.get("NPLUSONE_THRESHOLD", 2)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 2:
        error(
            f'["NPLUSONE_THRESHOLD"] must be a whole number >= 2, not {threshold!r}.',
            'Write for example PERFKIT["QUERY_GUARD"]["NPLUSONE_THRESHOLD"] = 2.',
        )
    for key in ("MAX_QUERIES", "MAX_DUPLICATES"):
        value = guard.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            error(
                f'["{key}"] must be a whole number >= 0 or None, not {value!r}.',
                f'Write for example PERFKIT["QUERY_GUARD"]["{key}"] = 50, or None for no budget.',
            )
    allowlist = guard.get("ALLOWLIST", [])
    example = '[{"relation": "news.Article.author", "location": "news/views.py:*"}]'
    if not isinstance(allowlist, (list, tuple)):
        error('["ALLOWLIST"] must be a list of dicts.', f"Write for example {example}.")
        return errors
    for index, entry in enumerate(allowlist):
        bad_keys = [k for k in entry if k not in _ALLOWLIST_KEYS] if isinstance(entry, dict) else []
        if (
            not isinstance(entry, dict)
            or not entry
            or bad_keys
            or not all(isinstance(v, str) for v in entry.values())
        ):
            error(
                f'["ALLOWLIST"][{index}] is {entry!r}: an entry is a non-empty dict of '
                + ", ".join(f'"{k}"' for k in _ALLOWLIST_KEYS)
                + " to shell-style patterns (strings).",
                f"Write for example {example}.",
            )
    return errors


_PROFILER_KINDS: dict[str, tuple[str, str]] = {
    "SLOW_REQUEST_MS": ("count", "1000"),
    "SLOW_KEEP": ("count", "200"),
    "INTERVAL": ("seconds>0", "0.001"),
    "MAX_PROFILES": ("count>0", "50"),
    "TTL": ("whole-seconds>0", "3600"),
    "MIN_INTERVAL": ("seconds", "10"),
    "TOKEN_MAX_TTL": ("whole-seconds>0", "86400"),
    "SAMPLE_SLOW": ("count", "20"),
}


def _check_profiler(raw: dict[str, Any]) -> list[CheckMessage]:
    profiler, errors = _check_section(
        raw,
        "PROFILER",
        PROFILER_DEFAULTS,
        _PROFILER_KINDS,
        "perfkit.E019",
        "perfkit.W008",
        '{"SLOW_REQUEST_MS": 1000, ...}',
    )
    if profiler is None:
        return errors
    header = profiler.get("HEADER", "")
    if not isinstance(header, str) or (header and not _HEADER_NAME.match(header)):
        errors.append(
            Error(
                f'PERFKIT["PROFILER"]["HEADER"] must be a header name, not {header!r}.',
                hint='Write for example "X-Perfkit-Profile", or "" to turn header profiling off.',
                id="perfkit.E019",
            )
        )
    return errors


_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]+$")


_FLEET_KINDS: dict[str, tuple[str, str]] = {
    "ENABLED": ("bool", "True"),
    "WINDOW_MINUTES": ("count>0", "60"),
    "MAX_ROUTES": ("count>0", "500"),
    "FLUSH_INTERVAL": ("seconds>0", "1.0"),
}


def _check_fleet(raw: dict[str, Any]) -> list[CheckMessage]:
    _, errors = _check_section(
        raw,
        "FLEET",
        FLEET_DEFAULTS,
        _FLEET_KINDS,
        "perfkit.E020",
        "perfkit.W009",
        '{"WINDOW_MINUTES": 60, ...}',
    )
    return errors


_INDEXES_KINDS: dict[str, tuple[str, str]] = {
    "ENABLED": ("bool", "True"),
    "EXPLAIN_MS": ("seconds", "100"),
    "MIN_ROWS": ("count", "10000"),
}


def _check_indexes(raw: dict[str, Any]) -> list[CheckMessage]:
    _, errors = _check_section(
        raw,
        "INDEXES",
        INDEXES_DEFAULTS,
        _INDEXES_KINDS,
        "perfkit.E021",
        "perfkit.W010",
        '{"EXPLAIN_MS": 100, ...}',
    )
    return errors


_PANEL_KINDS: dict[str, tuple[str, str]] = {
    "PERMISSION": ("permission", '"news.view_perfkit_panel"'),
    "SIGNAL_PERMISSION": ("permission", '"news.signal_backends"'),
    "SHOW_SQL_PARAMS": ("bool", "False"),
    "REFRESH_SECONDS": ("refresh", "5"),
    "MINUTES": ("count>0", "15"),
}


def _check_panel(raw: dict[str, Any]) -> list[CheckMessage]:
    panel, errors = _check_section(
        raw,
        "PANEL",
        PANEL_DEFAULTS,
        _PANEL_KINDS,
        "perfkit.E022",
        "perfkit.W011",
        '{"PERMISSION": None, ...}',
    )
    if panel is None or "DATABASE_ALIAS" not in panel:
        return errors
    alias = panel["DATABASE_ALIAS"]
    if not isinstance(alias, str) or alias not in settings.DATABASES:
        known = ", ".join(repr(name) for name in settings.DATABASES)
        errors.append(
            Error(
                f'PERFKIT["PANEL"]["DATABASE_ALIAS"] = {alias!r} names no database in DATABASES.',
                hint=f"Write one of {known}.",
                id="perfkit.E022",
            )
        )
    return errors
