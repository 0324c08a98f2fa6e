"""The index advisor: EXPLAIN a query, find the scan an index would avoid, name it.

Most slow pages that are not N+1s filter or sort on a column without an
index: invisible on a 100-row development database, deadly on production's
million rows. perfkit reads the plan itself:

* **When**: on PostgreSQL, right after a ``SELECT`` that took at least
  ``INDEXES["EXPLAIN_MS"]`` (100 ms), or after every ``SELECT`` of a
  ``capture(explain=True)`` block (the pytest plugin's
  ``--perfkit-explain``). Each query shape (fingerprint) is explained once
  per process, failures included; the verdicts are kept (4,096 shapes at
  most). Not a statement with ``;`` in it (EXPLAIN would run what follows).
* **How**: ``EXPLAIN (FORMAT JSON)`` of the same SQL with the same
  parameters, on the same connection, through the driver's own cursor (not
  Django's, so perfkit's collector does not see it), never ``ANALYZE`` (that
  would run the query again). Inside a transaction it runs in a savepoint,
  so a failing EXPLAIN cannot break the transaction; in a transaction that
  already failed it is skipped. Anything going wrong is counted
  (:data:`stats`) and never reaches the request.
* **What is flagged**: a sequential scan with a filter on a table of at
  least ``MIN_ROWS`` rows (PostgreSQL's own estimate, ``pg_class.reltuples``);
  a sort feeding a ``LIMIT`` over such a scan. Not flagged: small tables,
  scans without a filter (the query reads the whole table anyway), filters
  an index already serves (the plan is an index scan then).
* **The fix, as code**: ``models.Index(fields=[...], name=...)`` for the
  model that owns the table, equality columns first, then range columns,
  then the ordering (the order a B-tree serves them in); a constant boolean
  condition becomes a partial index's ``condition=Q(...)``.

Other databases: nothing is explained.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from django_perfkit.queries.fingerprint import fingerprint
from django_perfkit.record import _short_path

__all__ = ["IndexAdvice", "advise", "explain_after", "stats"]

logger = logging.getLogger("django_perfkit.queries")

#: What the advisor did in this process: explained, skipped (failed or not
#: explainable), cached (shape already explained).
stats = {"explained": 0, "failed": 0, "cached": 0}

_MAX_CACHED = 4096
#: fingerprint -> advice found for it (possibly none).
_verdicts: dict[str, list[IndexAdvice]] = {}
#: (alias, table) -> (estimated rows, when read).
_sizes: dict[tuple[str, str], tuple[float, float]] = {}
_SIZE_TTL = 60.0


@dataclass(slots=True)
class IndexAdvice:
    """One index that would serve a query the plan answers with a sequential scan."""

    #: ``"app_label.Model"`` owning the table (``None`` if no model does).
    model: str | None
    table: str
    #: Model field names (or columns when no model owns the table), in index order.
    fields: list[str]
    #: The query's place in project code (``file:line in func``).
    location: str | None
    #: The plan node that scans (``Seq Scan on news_comment  Filter: ...``).
    plan: str
    #: The table's estimated rows.
    table_rows: int
    #: What to write: ``models.Index(fields=[...], name="...")`` in ``Model.Meta.indexes``.
    suggestion: str
    fingerprint: str = ""
    handled: bool = False

    def __str__(self) -> str:
        where = f" at {self.location}" if self.location else ""
        return (
            f"missing index: {self.model or self.table} ({self.table_rows:,} rows) "
            f"scanned sequentially{where}\n    plan: {self.plan}\n    fix: {self.suggestion}"
        )


# --- reading a plan ------------------------------------------------------------------

_COMPARISON = re.compile(
    r'\(*"?(?:[a-z_][a-z0-9_]*"?\.)?"?([a-z_][a-z0-9_]*)"?\)?(?:::[a-z ]+(?:\[\])?)?\)?\s*'
    r"(=|<>|!=|<=|>=|<|>|~~\*?|!~~|IS NOT|IS)\s",
    re.I,
)
_BARE_BOOLEAN = re.compile(r'^(NOT\s+)?"?(?:[a-z_][a-z0-9_]*"?\.)?"?([a-z_][a-z0-9_]*)"?$', re.I)
_SORT_KEY = re.compile(r'^"?(?:[a-z_][a-z0-9_]*"?\.)?"?([a-z_][a-z0-9_]*)"?(?:\s+DESC)?', re.I)


def _walk(node: dict[str, Any], parents: list[dict[str, Any]]) -> Any:
    yield node, parents
    for child in node.get("Plans", ()):
        yield from _walk(child, [*parents, node])


def _columns(filter_text: str) -> tuple[list[str], list[str], dict[str, bool]]:
    """Equality columns, range columns, and constant booleans of a plan's Filter."""
    equal: list[str] = []
    ranged: list[str] = []
    booleans: dict[str, bool] = {}
    for column, operator in _COMPARISON.findall(filter_text):
        if operator.startswith(("~~", "!~~")):
            continue  # LIKE: a B-tree serves only some patterns; not advised
        target = equal if operator.upper() in ("=", "IS") else ranged
        if column not in equal and column not in ranged:
            target.append(column)
    # A boolean column alone is a term of the top-level AND: "is_public", "(NOT x)".
    for term in re.split(r"\s+AND\s+", filter_text, flags=re.I):
        match = _BARE_BOOLEAN.match(term.strip().strip("()").strip())
        if match is None:
            continue
        column = match.group(2)
        if column.upper() not in ("NOT", "AND", "OR", "TRUE", "FALSE") and column not in equal:
            booleans[column] = not match.group(1)
    return equal, ranged, booleans


def _model_for(table: str) -> Any:
    from django.apps import apps

    for model in apps.get_models(include_auto_created=True):
        if model._meta.db_table == table:
            return model
    return None


def _field_names(model: Any, columns: list[str]) -> list[str]:
    if model is None:
        return columns
    by_column = {
        getattr(f, "column", None): f.name for f in model._meta.concrete_fields if f.column
    }
    return [by_column.get(column, column) for column in columns]


def _index_name(table: str, fields: list[str]) -> str:
    # Django's limit on index names is 30 characters, and they must start with a letter.
    base = f"{table.split('_', 1)[-1][:12]}_{'_'.join(f[:6] for f in fields)}"[:26]
    return f"{base}_idx" if base[:1].isalpha() else f"i{base[:25]}_idx"


def _suggestion(model: Any, table: str, fields: list[str], booleans: dict[str, bool]) -> str:
    name = _index_name(table, fields)
    quoted = ", ".join(f'"{f}"' for f in fields)
    condition = ""
    if booleans:
        parts = ", ".join(
            f"{_field_names(model, [column])[0]}={value}" for column, value in booleans.items()
        )
        condition = f", condition=Q({parts})"
    index = f'models.Index(fields=[{quoted}], name="{name}"{condition})'
    owner = model._meta.object_name if model is not None else table
    return f"add {index} to {owner}.Meta.indexes (then makemigrations)"


def advise(
    plan: Any, table_rows: Any, min_rows: int, location: str | None = None
) -> list[IndexAdvice]:
    """Index advice from an ``EXPLAIN (FORMAT JSON)`` result.

    ``table_rows(table)`` gives a table's estimated size (``None``: unknown).
    """
    root = plan[0]["Plan"] if isinstance(plan, list) else plan["Plan"]
    found: list[IndexAdvice] = []
    for node, parents in _walk(root, []):
        if node.get("Node Type") != "Seq Scan" or "Relation Name" not in node:
            continue
        table = node["Relation Name"]
        equal, ranged, booleans = _columns(node.get("Filter", ""))
        order: list[str] = []
        # A sort right above the scan (or above a filter on it) feeding a LIMIT.
        limited_sort = [
            p for p in parents if p.get("Node Type") in ("Sort", "Incremental Sort")
        ] and any(p.get("Node Type") == "Limit" for p in parents)
        if limited_sort:
            alias = node.get("Alias", table)
            for parent in parents:
                for key in parent.get("Sort Key", ()):
                    # Only this table's columns: "news_article.published_at" is
                    # another table's (a join), "published_at" alone is ours.
                    qualifier = key.split(".", 1)[0].strip('"') if "." in key else alias
                    match = _SORT_KEY.match(key)
                    if qualifier != alias or not match:
                        continue
                    if match.group(1) not in equal + ranged + order:
                        order.append(match.group(1))
        columns = equal + ranged + order
        if not columns:
            continue  # no filter and no ordering: the query reads the table anyway
        rows = table_rows(table)
        if rows is None or rows < min_rows:
            continue
        model = _model_for(table)
        fields = _field_names(model, columns)
        text = f"Seq Scan on {table}"
        if node.get("Filter"):
            # Shape only: the filter's literals are the query's parameters.
            text += f"  Filter: {fingerprint(node['Filter'])}"
        if order:
            text += f"  (then Sort by {', '.join(order)} for a LIMIT)"
        label = f"{model._meta.app_label}.{model._meta.object_name}" if model else None
        found.append(
            IndexAdvice(
                model=label,
                table=table,
                fields=fields,
                location=location,
                plan=text,
                table_rows=int(rows),
                suggestion=_suggestion(model, table, fields, booleans),
            )
        )
    return found


# --- explaining after a query (the collector calls this) -------------------------------


def _table_rows(raw: Any, alias: str) -> Any:
    def size(table: str) -> float | None:
        known = _sizes.get((alias, table))
        now = time.monotonic()
        if known is not None and now - known[1] < _SIZE_TTL:
            return known[0]
        with raw.cursor() as cursor:
            cursor.execute("SELECT reltuples FROM pg_class WHERE relname = %s", [table])
            row = cursor.fetchone()
        rows = None if row is None else float(row[0])
        if rows is not None:
            _sizes[(alias, table)] = (rows, now)
        return rows

    return size


def explain_after(
    connection: Any, sql: str, params: Any, site: tuple[str, int, str] | None, shape: str
) -> list[IndexAdvice]:
    """EXPLAIN a ``SELECT`` that just ran on ``connection``; its advice (cached per shape)."""
    known = _verdicts.get(shape)
    if known is not None:
        stats["cached"] += 1
        return known
    if connection.vendor != "postgresql":
        return []
    raw = connection.connection
    if raw is None:
        return []
    from django_perfkit.conf import get_settings

    location = None if site is None else f"{_short_path(site[0])}:{site[1]} in {site[2]}"
    min_rows = get_settings().indexes.min_rows
    try:
        import psycopg

        status = raw.info.transaction_status
        if status == psycopg.pq.TransactionStatus.INERROR:
            stats["failed"] += 1
            return []  # the transaction already failed: not now (not cached)
        in_transaction = status == psycopg.pq.TransactionStatus.INTRANS
        with raw.cursor() as cursor:
            if in_transaction:
                cursor.execute("SAVEPOINT perfkit_explain")
            try:
                cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
                plan = cursor.fetchone()[0]
                if isinstance(plan, str):
                    plan = json.loads(plan)
                # Table sizes are read inside the savepoint too: any statement
                # perfkit runs in the user's transaction can be rolled back.
                advice = advise(plan, _table_rows(raw, connection.alias), min_rows, location)
                if in_transaction:
                    cursor.execute("RELEASE SAVEPOINT perfkit_explain")
            except Exception:
                if in_transaction:
                    cursor.execute("ROLLBACK TO SAVEPOINT perfkit_explain")
                    cursor.execute("RELEASE SAVEPOINT perfkit_explain")
                raise
    except Exception:
        stats["failed"] += 1
        logger.debug("perfkit: could not EXPLAIN %s", shape, exc_info=True)
        advice = []  # remembered: a shape that cannot be explained is not tried again
        _remember(shape, advice)
        return advice
    stats["explained"] += 1
    for item in advice:
        item.fingerprint = shape
    _remember(shape, advice)
    return advice


def _remember(shape: str, advice: list[IndexAdvice]) -> None:
    if len(_verdicts) >= _MAX_CACHED:
        _verdicts.clear()
    _verdicts[shape] = advice


def forget() -> None:
    """Drop the cached verdicts and table sizes (after adding an index, in tests)."""
    _verdicts.clear()
    _sizes.clear()
