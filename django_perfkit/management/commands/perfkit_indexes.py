"""``manage.py perfkit_indexes``: which tables want an index, which indexes go unused.

From PostgreSQL's statistics views, since the last statistics reset:

* **add**: tables with at least ``--min-rows`` live rows (default
  ``INDEXES["MIN_ROWS"]``) read by more sequential scans than index scans,
  busiest first, with the model that owns each. Which columns to index is a
  question for the queries (``capture(explain=True)`` names them); this says
  where to look.
* **consider dropping**: indexes never scanned (``idx_scan = 0``) that do not
  enforce a primary key or uniqueness, largest first, with their size. Every
  index costs each write and some memory; an unused one costs only that. The
  statistics are per server: check replicas that serve reads before
  dropping.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from django_perfkit.conf import get_settings

_TABLES = """
SELECT relname, seq_scan, COALESCE(idx_scan, 0), n_live_tup, seq_tup_read
FROM pg_stat_user_tables
WHERE n_live_tup >= %s AND seq_scan > COALESCE(idx_scan, 0)
ORDER BY seq_tup_read DESC
"""

_UNUSED = """
SELECT s.relname, s.indexrelname, pg_relation_size(s.indexrelid)
FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid
WHERE s.idx_scan = 0 AND NOT i.indisunique AND NOT i.indisprimary
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = s.indexrelid)
ORDER BY pg_relation_size(s.indexrelid) DESC
"""


def _models_by_table() -> dict[str, str]:
    from django.apps import apps

    return {
        m._meta.db_table: f"{m._meta.app_label}.{m._meta.object_name}"
        for m in apps.get_models(include_auto_created=True)
    }


def index_report(alias: str = "default", min_rows: int | None = None) -> dict[str, Any]:
    """``{"add": [...], "consider_dropping": [...]}`` for ``alias``'s database."""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        raise CommandError(
            f"perfkit_indexes reads PostgreSQL's statistics: database {alias!r} is "
            f"{connection.vendor}"
        )
    rows_needed = get_settings().indexes.min_rows if min_rows is None else min_rows
    owners = _models_by_table()
    with connection.cursor() as cursor:
        cursor.execute(_TABLES, [rows_needed])
        tables = cursor.fetchall()
        cursor.execute(_UNUSED)
        unused = cursor.fetchall()
    return {
        "add": [
            {
                "table": table,
                "model": owners.get(table),
                "seq_scans": seq,
                "index_scans": idx,
                "live_rows": live,
                "rows_read_by_seq_scans": read,
            }
            for table, seq, idx, live, read in tables
        ],
        "consider_dropping": [
            {"table": table, "model": owners.get(table), "index": index, "bytes": size}
            for table, index, size in unused
        ],
    }


class Command(BaseCommand):
    help = "Tables read by sequential scans, and indexes never used (PostgreSQL statistics)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", default="default", help="the database alias")
        parser.add_argument("--min-rows", type=int, help="ignore smaller tables")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        report = index_report(options["database"], options["min_rows"])
        if options["json"]:
            self.stdout.write(json.dumps(report))
            return
        lines = ["Tables read by more sequential scans than index scans (add an index?):"]
        for row in report["add"]:
            owner = row["model"] or "(no model)"
            lines.append(
                f"  {row['table']} ({owner}): {row['live_rows']:,} rows, "
                f"{row['seq_scans']:,} seq scans vs {row['index_scans']:,} index scans, "
                f"{row['rows_read_by_seq_scans']:,} rows read by them"
            )
        if not report["add"]:
            lines.append("  (none)")
        lines.append("Indexes never scanned, not unique (consider dropping):")
        for row in report["consider_dropping"]:
            owner = row["model"] or "(no model)"
            lines.append(f"  {row['index']} on {row['table']} ({owner}): {row['bytes']:,} bytes")
        if not report["consider_dropping"]:
            lines.append("  (none)")
        self.stdout.write("\n".join(lines))
