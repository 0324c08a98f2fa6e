"""System check ``perfkit.W012``: a database whose plans the index advisor cannot read.

The advisor reads PostgreSQL's ``EXPLAIN (FORMAT JSON)`` and SQLite's
``EXPLAIN QUERY PLAN``. On any other database it explains nothing, which
would go unnoticed: a project would believe its queries are checked. One
warning says so, naming each such database alias and its vendor, while the
advisor is on (``PERFKIT["INDEXES"]["ENABLED"]``, the default).

A ``compatibility`` check, not a ``database`` one: the vendor is known from
the settings without connecting, and ``database`` checks run only when a
command asks for them (``migrate``, ``check --database``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.apps import AppConfig
from django.core.checks import CheckMessage, Tags, Warning, register

from django_perfkit.queries.indexes import VENDORS

__all__ = ["check_index_advisor", "unsupported_databases"]


def unsupported_databases(databases: Iterable[Any]) -> list[CheckMessage]:
    """W012 for the connections (anything with ``alias`` and ``vendor``) the advisor skips."""
    skipped = [(db.alias, db.vendor) for db in databases if db.vendor not in VENDORS]
    if not skipped:
        return []
    named = ", ".join(f"{alias!r} ({vendor})" for alias, vendor in skipped)
    databases_word = "database" if len(skipped) == 1 else "databases"
    return [
        Warning(
            f"perfkit's index advisor reads PostgreSQL and SQLite plans only: the queries "
            f"of {databases_word} {named} are not explained.",
            hint=(
                'The advisor is off for it. Set PERFKIT["INDEXES"]["ENABLED"] = False to '
                "silence this warning (or add perfkit.W012 to SILENCED_SYSTEM_CHECKS)."
            ),
            id="perfkit.W012",
        )
    ]


@register(Tags.compatibility)
def check_index_advisor(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """``perfkit.W012`` while the advisor is on and a database is neither PostgreSQL nor SQLite."""
    from django.db import connections

    from django_perfkit.conf import get_settings

    try:
        settings = get_settings()
    except Exception:
        return []  # a broken PERFKIT setting: perfkit's settings checks report it
    if not (settings.enabled and settings.collect_queries and settings.indexes.enabled):
        return []  # the advisor runs on the query collector: off, nothing to warn about
    # connections[alias] builds the backend's wrapper from the settings: no connection.
    return unsupported_databases(connections[alias] for alias in connections)
