"""Route rules: rate limits from ``PERFKIT["RATELIMITS"]``, without touching views.

::

    PERFKIT = {"RATELIMITS": [
        {"path": "/api/", "rate": "100/m", "key": "user_or_ip", "method": "GET"},
        {"path": "/login/", "rate": "5/m", "key": "post:username", "method": "POST"},
    ]}

``PerfkitMiddleware`` checks them in ``process_view``: after the other
middleware has run (so ``request.user`` exists for ``key="user"``) and before
the view, so a limited request never reaches the database. A rule applies
when the request path starts with its ``path``; every matching rule is
checked. Optional keys: ``method``, ``algorithm``, ``cost``, ``fail``,
``group`` (default ``"rule:<path>"``). Bad rules are reported by the system
checks at startup and skipped at request time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest, HttpResponse

from django_perfkit.conf import PerfkitSettings, get_settings
from django_perfkit.ratelimit.core import InvalidLimit, Limit, Usage
from django_perfkit.ratelimit.responses import ratelimited_response

RULE_KEYS = frozenset({"path", "rate", "key", "method", "algorithm", "cost", "fail", "group"})


@dataclass(frozen=True, slots=True)
class Rule:
    path: str
    limit: Limit


def build_rule(spec: Any) -> Rule:
    """A validated rule; raises ``InvalidLimit`` (used by the system checks too)."""
    if not isinstance(spec, dict):
        raise InvalidLimit(
            f"a rule must be a dict like {{'path': '/api/', 'rate': '100/m'}}, not {spec!r}"
        )
    unknown = set(spec) - RULE_KEYS
    if unknown:
        raise InvalidLimit(f"unknown rule keys {sorted(unknown)}; allowed: {sorted(RULE_KEYS)}")
    path = spec.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidLimit(f"rule path {path!r} must be a string starting with '/'")
    if "rate" not in spec:
        raise InvalidLimit(f"rule for {path!r} has no rate")
    limit = Limit.build(
        spec.get("group", f"rule:{path}"),
        spec.get("key", "user_or_ip"),
        spec["rate"],
        spec.get("method", None),
        spec.get("algorithm"),
        spec.get("cost", 1),
        spec.get("fail"),
    )
    return Rule(path, limit)


_compiled: tuple[PerfkitSettings | None, tuple[Rule, ...]] = (None, ())


def rules() -> tuple[Rule, ...]:
    """The valid rules of the current settings, built once per settings object."""
    global _compiled
    settings = get_settings()
    if _compiled[0] is not settings:
        built = []
        for spec in settings.ratelimits:
            try:
                built.append(build_rule(spec))
            except InvalidLimit:
                continue  # reported by system check perfkit.E011
        _compiled = (settings, tuple(built))
    return _compiled[1]


def _matching(request: HttpRequest) -> list[Rule]:
    path = request.path_info
    return [rule for rule in rules() if path.startswith(rule.path)]


def _decide(request: HttpRequest, usages: list[Usage | None]) -> HttpResponse | None:
    for usage in usages:
        if usage is not None and usage["should_limit"]:
            request.limited = True  # type: ignore[attr-defined]
            request.ratelimit = usage  # type: ignore[attr-defined]
            return ratelimited_response(request, usage)
    return None


def enforce(request: HttpRequest) -> HttpResponse | None:
    """A 429 response when a matching rule limits the request, else None."""
    if not get_settings().ratelimits:
        return None
    return _decide(request, [rule.limit.usage(request) for rule in _matching(request)])


async def aenforce(request: HttpRequest) -> HttpResponse | None:
    if not get_settings().ratelimits:
        return None
    return _decide(request, [await rule.limit.ausage(request) for rule in _matching(request)])
