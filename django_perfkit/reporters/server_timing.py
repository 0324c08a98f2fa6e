"""The ``Server-Timing`` response header (W3C Server Timing).

Browsers show it in the network panel's Timing tab, next to the request it
describes, so a developer sees "12 queries, 48 ms" without opening anything
else. Entries::

    Server-Timing: db;dur=4.12;desc="12 queries", render;dur=3.40, total;dur=21.05

* ``total``: time from the middleware's start to the response (what perfkit
  can see; the web server's own queueing is not in it);
* ``db``: time in database queries, and their count;
* ``cache``: time in ``.cache()`` and on-write lookups and stores, with hits, misses
  and on-write recomputes;
* one entry per ``perfkit.timer("label")`` section (repeated sections add up);
* ``redis-failures`` when perfkit's Redis calls failed or were skipped.

Who gets it is ``PERFKIT["SERVER_TIMING"]``: ``"all"`` (the default: the
numbers are aggregates and carry no SQL), ``"staff"``, ``"internal"`` (the client
address is in ``INTERNAL_IPS``; ``REMOTE_ADDR`` only, so a forged
``X-Forwarded-For`` changes nothing), ``"staff_or_internal"`` or ``"off"``.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings as django_settings
from django.http import HttpRequest

from django_perfkit.conf import get_settings
from django_perfkit.record import RequestRecord

HEADER = "Server-Timing"

# A metric name must be an HTTP token (RFC 9110); anything else becomes "-".
_NOT_TOKEN = re.compile(r"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")


def metric_name(label: str) -> str:
    return _NOT_TOKEN.sub("-", label)[:64] or "-"


def _desc(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_header(record: RequestRecord) -> str:
    entries = []
    db = record.db
    if db.count:
        noun = "query" if db.count == 1 else "queries"
        text = f"{db.count} {noun}"
        duplicates = db.duplicates
        if duplicates:
            # No comma: naive Server-Timing parsers split entries on commas.
            text += f" ({duplicates} duplicate" + (")" if duplicates == 1 else "s)")
        entries.append(f"db;dur={db.time * 1000:.2f};desc={_desc(text)}")
    cache = record.cache
    if cache.hits or cache.misses or cache.recomputes:
        hits = "hit" if cache.hits == 1 else "hits"
        misses = "miss" if cache.misses == 1 else "misses"
        text = f"{cache.hits} {hits}, {cache.misses} {misses}"
        if cache.recomputes:
            noun = "recompute" if cache.recomputes == 1 else "recomputes"
            text += f", {cache.recomputes} {noun}"
        desc = _desc(text)
        entries.append(f"cache;dur={cache.time * 1000:.2f};desc={desc}")
    for label, section in record.sections.items():
        name = metric_name(label)
        if section.count > 1:
            entries.append(
                f"{name};dur={section.time * 1000:.2f};desc={_desc(f'{section.count} calls')}"
            )
        else:
            entries.append(f"{name};dur={section.time * 1000:.2f}")
    if record.ratelimits:
        # The last check decided: "3/5 left" or "limited". Not the group: its
        # default is the view's dotted path, which anonymous clients need not see.
        last = record.ratelimits[-1]
        state = "limited" if last.limited else f"{last.remaining}/{last.limit} left"
        entries.append(f"ratelimit;desc={_desc(state)}")
    if record.view_started is not None and record.finished is not None:
        # From the view's start (after the other middleware's request phase)
        # to the response's return here: view, template rendering and the
        # middleware's response phase.
        entries.append(f"view;dur={(record.finished - record.view_started) * 1000:.2f}")
    if record.profile_id and not record.profile_sampled:
        entries.append(f"profile;desc={_desc(record.profile_id)}")
    if record.redis_failures:
        entries.append(f"redis-failures;desc={_desc(str(record.redis_failures))}")
    entries.append(f"total;dur={record.duration * 1000:.2f}")
    return ", ".join(entries)


def _is_internal(request: HttpRequest) -> bool:
    return request.META.get("REMOTE_ADDR") in getattr(django_settings, "INTERNAL_IPS", ())


def _is_staff(request: HttpRequest) -> bool:
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_staff)


def allowed(request: HttpRequest, mode: str) -> bool:
    if mode == "all":
        return True
    if mode == "off":
        return False
    if mode == "internal":
        return _is_internal(request)
    if mode == "staff":
        return _is_staff(request)
    return _is_internal(request) or _is_staff(request)  # staff_or_internal


def report_server_timing(record: RequestRecord, request: HttpRequest, response: Any) -> None:
    if not allowed(request, get_settings().server_timing):
        return
    value = build_header(record)
    existing = response.get(HEADER) if hasattr(response, "get") else None
    response[HEADER] = f"{existing}, {value}" if existing else value
