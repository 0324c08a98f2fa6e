"""The index advisor: EXPLAIN a query, find the scan an index would avoid, name it.

Most slow pages that are not N+1s filter or sort on a column without an
index: invisible on a 100-row development database, deadly on production's
million rows. perfkit reads the plan itself:

* **When**: on PostgreSQL and SQLite, right after a ``SELECT`` that took at
  least ``INDEXES["EXPLAIN_MS"]`` (100 ms), or after every ``SELECT`` of a
  ``capture(explain=True)`` block (the pytest plugin's
  ``--perfkit-explain``). Each query shape (fingerprint) is explained once
  per process and database vendor, failures included; the verdicts are kept
  (4,096 shapes at most). Not a statement with ``;`` in it (EXPLAIN would run
  what follows).
* **How**: ``EXPLAIN (FORMAT JSON)`` on PostgreSQL, ``EXPLAIN QUERY PLAN`` on
  SQLite, of the same SQL with the same parameters, on the same connection,
  through the driver's own cursor (not Django's, so perfkit's collector does
  not see it), never ``ANALYZE`` (that would run the query again). On
  PostgreSQL, inside a transaction it runs in a savepoint, so a failing
  EXPLAIN cannot break the transaction; in a transaction that already failed
  it is skipped. (SQLite has no failed-transaction state, and its EXPLAIN
  writes nothing.) Anything going wrong is counted (:data:`stats`) and never
  reaches the request.
* **What is flagged** on PostgreSQL: a sequential scan with a filter on a
  table of at least ``MIN_ROWS`` rows (PostgreSQL's own estimate,
  ``pg_class.reltuples``); a sort feeding a ``LIMIT`` over such a scan; the
  inner side of a Nested Loop that is such a scan, read again for each of
  the (estimated) outer rows: the index is on its join columns. Not flagged:
  small tables, scans without a filter (the query reads the whole table
  anyway), filters an index already serves (the plan is an index scan then).
* **What is flagged** on SQLite, whose plan names tables but not columns:
  ``SCAN <table>`` (no index) of a table the ``WHERE`` compares, with the
  columns read from Django's SQL (``"table"."column" = %s``: qualified, as
  the ORM writes them; raw SQL without qualified names gets no advice); the
  same with ``USE TEMP B-TREE FOR ORDER BY`` and a ``LIMIT`` (the ordering
  joins the index); a scan repeated per outer row (in a correlated subquery,
  or an inner loop of a join) on its join columns; and ``USING AUTOMATIC
  INDEX (column=?)``, an index SQLite builds again on every run of the query.
  Table sizes: ``sqlite_stat1`` when ``ANALYZE`` has filled it, else
  ``SELECT max(rowid)`` (a B-tree descent, not a count; deleted rows still
  count, so it can overestimate; a ``WITHOUT ROWID`` table is "unknown" and
  gets no advice).
* **The fix, as code**: ``models.Index(fields=[...], name=...)`` for the
  model that owns the table, join columns first, then equality columns, then
  range columns, then the ordering (the order a B-tree serves them in); a
  constant boolean condition becomes a partial index's ``condition=Q(...)``.

Other databases: nothing is explained, and system check ``perfkit.W012``
(:mod:`django_perfkit.queries.checks`) says so once.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from django_perfkit.queries.fingerprint import fingerprint
from django_perfkit.record import _short_path

__all__ = ["VENDORS", "IndexAdvice", "advise", "advise_sqlite", "explain_after", "stats"]

logger = logging.getLogger("django_perfkit.queries")

#: The database vendors whose plans the advisor reads (``connection.vendor``).
VENDORS: Final = ("postgresql", "sqlite")

#: What the advisor did in this process: explained, skipped (failed or not
#: explainable), cached (shape already explained).
stats = {"explained": 0, "failed": 0, "cached": 0}

_MAX_CACHED = 4096
#: (vendor, fingerprint) -> advice found for it (possibly none). The vendor is
#: part of the key: one shape can have a PostgreSQL plan and a SQLite plan.
_verdicts: dict[tuple[str, str], list[IndexAdvice]] = {}
#: (alias, table) -> (estimated rows, when read).
_sizes: dict[tuple[str, str], tuple[float, float]] = {}
_SIZE_TTL = 60.0

TableRows = Callable[[str], "float | None"]


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


# --- reading a PostgreSQL plan ---------------------------------------------------------

# Not right after a name, a "::" cast or a quote: "'UTC'::text))::date = " compares
# no column called "text" or "date".
_COMPARISON = re.compile(
    r'(?<![\w:$."\'])\(*"?(?:[a-z_][a-z0-9_]*"?\.)?"?([a-z_][a-z0-9_]*)"?\)?'
    r"(?:::[a-z ]+(?:\[\])?)?\)?\s*"
    r"(=|<>|!=|<=|>=|<|>|~~\*?|!~~|IS NOT|IS)\s",
    re.I,
)
_BARE_BOOLEAN = re.compile(r'^(NOT\s+)?"?(?:[a-z_][a-z0-9_]*"?\.)?"?([a-z_][a-z0-9_]*)"?$', re.I)
_SORT_KEY = re.compile(r'^"?(?:[a-z_][a-z0-9_]*"?\.)?"?([a-z_][a-z0-9_]*)"?(?:\s+DESC)?', re.I)
# One side of a join condition as PostgreSQL prints it: "(u0.name)::text", "t3.id",
# "name" (a parameterised scan's own filter names its columns unqualified).
_PLAN_COLUMN = (
    r'(?<![\w:$."\'])\(*(?:"?([a-z_][a-z0-9_$]*)"?\.)?"?([a-z_][a-z0-9_]*)"?\)?'
    r"(?:::[a-z ]+?(?:\[\])?)?\)?"
)
_PLAN_EQUALITY = re.compile(_PLAN_COLUMN + r"\s*=\s*" + _PLAN_COLUMN, re.I)
# Nodes between a Nested Loop and its inner scan that keep it a per-outer-row read:
# Materialize keeps the scanned rows (each outer row is still compared with all of
# them), Memoize keeps results per distinct outer value.
_PASS_THROUGH = ("Materialize", "Memoize")
# Words before "(" that open a group, not a function call: a column in a function
# call (upper(name), a date cast) is not what a plain index on it serves.
_NOT_CALLS = frozenset({"AND", "OR", "NOT", "IN", "ANY", "ALL", "EXISTS", "ON", "WHERE", "SELECT"})


def _walk(node: dict[str, Any], parents: list[dict[str, Any]]) -> Any:
    yield node, parents
    for child in node.get("Plans", ()):
        yield from _walk(child, [*parents, node])


def _columns(filter_text: str) -> tuple[list[str], list[str], dict[str, bool]]:
    """Equality columns, range columns, and constant booleans of a plan's Filter."""
    equal: list[str] = []
    ranged: list[str] = []
    booleans: dict[str, bool] = {}
    for comparison in _COMPARISON.finditer(filter_text):
        column, operator = comparison.groups()
        if operator.startswith(("~~", "!~~")):
            continue  # LIKE: a B-tree serves only some patterns; not advised
        if _in_call(filter_text, comparison.start(1)):
            continue  # upper(name) = ...: an index on name does not serve it
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


def _in_call(text: str, position: int) -> bool:
    """Is ``text[position]`` inside a function call's or a ``NOT``'s parentheses?"""
    depth = 0
    for index in range(position - 1, -1, -1):
        char = text[index]
        if char == ")":
            depth += 1
        elif char == "(":
            if depth:
                depth -= 1
                continue
            before = text[:index]
            word = re.search(r"(\w+)(\s*)$", before)
            if word is not None and word.group(1).upper() == "NOT":
                return True  # NOT (a = 1): not a condition an index on a serves
            if word is not None and not word.group(2) and word.group(1).upper() not in _NOT_CALLS:
                return True
    return False


def _repeated_inner(
    node: dict[str, Any], parents: list[dict[str, Any]]
) -> tuple[dict[str, Any], float, str | None] | None:
    """The Nested Loop reading ``node`` once per outer row, its outer rows, and the
    node in between (``"Materialize"``, ``"Memoize"`` or ``None``).

    In a plan without ``ANALYZE`` the loop count is the outer side's estimated
    rows. One outer row is one read: not repeated.
    """
    child = node
    through: str | None = None
    for parent in reversed(parents):
        kind = parent.get("Node Type")
        if kind in _PASS_THROUGH:
            through = kind
            child = parent
            continue
        if kind != "Nested Loop" or child.get("Parent Relationship") != "Inner":
            return None
        outer = [p for p in parent.get("Plans", ()) if p.get("Parent Relationship") == "Outer"]
        rows = float(outer[0].get("Plan Rows", 0)) if outer else 0.0
        return (parent, rows, through) if rows > 1 else None
    return None


def _join_columns(alias: str, join_filter: str, own_filter: str) -> list[str]:
    """Columns of ``alias`` compared for equality with another table's columns."""
    alias = alias.lower()
    found: list[str] = []
    for text, own in ((join_filter, False), (own_filter, True)):
        for match in _PLAN_EQUALITY.finditer(text):
            left_alias, left, right_alias, right = match.groups()
            if _in_call(text, match.start(2)) or _in_call(text, match.start(4)):
                continue
            sides = ((left_alias, left, right_alias), (right_alias, right, left_alias))
            for qualifier, column, other in sides:
                # Our column: qualified with our alias, or unqualified in our own Filter.
                ours = (qualifier or "").lower() == alias if qualifier else own
                theirs = other is not None and other.lower() != alias
                if ours and theirs and column not in found:
                    found.append(column)
    return found


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


def _unique(*groups: list[str]) -> list[str]:
    found: list[str] = []
    for group in groups:
        found.extend(column for column in group if column not in found)
    return found


def _advice(
    table: str,
    columns: list[str],
    booleans: dict[str, bool],
    rows: float,
    text: str,
    location: str | None,
) -> IndexAdvice:
    model = _model_for(table)
    fields = _field_names(model, columns)
    label = f"{model._meta.app_label}.{model._meta.object_name}" if model else None
    return IndexAdvice(
        model=label,
        table=table,
        fields=fields,
        location=location,
        plan=text,
        table_rows=int(rows),
        suggestion=_suggestion(model, table, fields, booleans),
    )


def advise(
    plan: Any, table_rows: TableRows, min_rows: int, location: str | None = None
) -> list[IndexAdvice]:
    """Index advice from a PostgreSQL ``EXPLAIN (FORMAT JSON)`` result.

    ``table_rows(table)`` gives a table's estimated size (``None``: unknown).
    """
    root = plan[0]["Plan"] if isinstance(plan, list) else plan["Plan"]
    found: list[IndexAdvice] = []
    for node, parents in _walk(root, []):
        if node.get("Node Type") != "Seq Scan" or "Relation Name" not in node:
            continue
        table = node["Relation Name"]
        alias = node.get("Alias", table)
        equal, ranged, booleans = _columns(node.get("Filter", ""))
        order: list[str] = []
        join: list[str] = []
        repeated = _repeated_inner(node, parents)
        if repeated is not None:
            loop = repeated[0]
            join = _join_columns(alias, loop.get("Join Filter", ""), node.get("Filter", ""))
        # A sort right above the scan (or above a filter on it) feeding a LIMIT. Not
        # for a join's inner side: its order is not the joined rows' order.
        limited_sort = [
            p for p in parents if p.get("Node Type") in ("Sort", "Incremental Sort")
        ] and any(p.get("Node Type") == "Limit" for p in parents)
        if limited_sort and not join:
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
        # Join columns first: the index is looked up with them, once per outer row.
        columns = _unique(join, equal, ranged, order)
        if not columns:
            continue  # no filter and no ordering: the query reads the table anyway
        rows = table_rows(table)
        if rows is None or rows < min_rows:
            continue
        text = f"Seq Scan on {table}"
        if join and repeated is not None:
            loop, outer_rows, through = repeated
            text += (
                f", inner side of a Nested Loop: read for each of ~{outer_rows:,.0f} outer rows"
                + (f" (through a {through})" if through else "")
            )
            if loop.get("Join Filter"):
                text += f"  Join Filter: {fingerprint(loop['Join Filter'])}"
        if node.get("Filter"):
            # Shape only: the filter's literals are the query's parameters.
            text += f"  Filter: {fingerprint(node['Filter'])}"
        if order:
            text += f"  (then Sort by {', '.join(order)} for a LIMIT)"
        found.append(_advice(table, columns, booleans, rows, text, location))
    return found


# --- reading SQLite's EXPLAIN QUERY PLAN ------------------------------------------------

# "SCAN news_comment", "SCAN U0" (an alias), "SEARCH t USING INDEX i (a=?)", and the
# older "SCAN TABLE news_comment AS U0" (SQLite < 3.36).
_SQLITE_LOOP = re.compile(r"^(SCAN|SEARCH)(?: TABLE)? (\S+)(?: AS (\S+))?(.*)$")
_SQLITE_AUTOMATIC = re.compile(r"USING AUTOMATIC (?:COVERING |PARTIAL )*INDEX \((.*)\)")
_SQLITE_KEY = re.compile(r"^\s*(\w+)\s*(=|>=|<=|>|<)")
# A column as Django writes it: "table"."column" or ALIAS."column".
_SQL_COLUMN = r'(?:"([^"]+)"|([A-Za-z_][A-Za-z0-9_]*))\."([^"]+)"'
_SQL_TERM = re.compile(
    _SQL_COLUMN
    + r"\s*(==|=|<>|!=|<=|>=|<|>|NOT\s+IN\b|IN\b|IS\s+NOT\b|IS\b|NOT\s+LIKE\b|LIKE\b|GLOB\b"
    + r"|BETWEEN\b)\s*(?:\(\s*)?(?:"
    + _SQL_COLUMN
    + r")?",
    re.I,
)
_SQL_BOOLEAN = re.compile(
    r"(?:\bWHERE|\bAND|\()\s*(NOT\s+)?"
    + _SQL_COLUMN
    + r"\s*(?=\bAND\b|\)|$|\bORDER\b|\bLIMIT\b|\bGROUP\b)",
    re.I,
)
_SQL_TABLE = re.compile(
    r'\b(?:FROM|JOIN)\s+"([^"]+)"(?:\s+(?:AS\s+)?(?:"([^"]+)"|([A-Za-z_][A-Za-z0-9_]*)))?', re.I
)
_SQL_KEYWORDS = frozenset(
    {
        "WHERE", "INNER", "LEFT", "RIGHT", "FULL", "CROSS", "JOIN", "ON", "GROUP", "ORDER",
        "LIMIT", "HAVING", "UNION", "OUTER", "NATURAL", "USING", "WINDOW", "EXCEPT",
        "INTERSECT", "OFFSET", "AS",
    }
)  # fmt: skip
_SQL_SORT_TERM = re.compile(r"^\s*" + _SQL_COLUMN + r"(?:\s+(ASC|DESC))?", re.I)
_EQUAL_OPERATORS = frozenset({"=", "==", "IN", "IS"})
_RANGE_OPERATORS = frozenset({"<", "<=", ">", ">=", "BETWEEN"})


def _sqlite_aliases(sql: str) -> dict[str, set[str]]:
    """Name in the plan -> tables it may be (two subqueries can both say ``U0``)."""
    names: dict[str, set[str]] = {}
    for match in _SQL_TABLE.finditer(sql):
        table = match.group(1)
        alias = match.group(2) or match.group(3)
        if alias is None or alias.upper() in _SQL_KEYWORDS:
            alias = table
        names.setdefault(alias, set()).add(table)
    return names


def _top_level(sql: str) -> str:
    """``sql`` with every parenthesised part emptied: the outermost query's clauses."""
    previous = None
    while previous != sql:
        previous = sql
        sql = re.sub(r"\([^()]*\)", "()", sql)
    return sql


@dataclass(slots=True)
class _Terms:
    equal: list[str]
    ranged: list[str]
    booleans: dict[str, bool]
    #: Columns compared with another table's column (a join or a correlation).
    join: list[str]
    #: The terms as read, for the advice's plan text.
    text: list[str]


def _sqlite_terms(sql: str, alias: str) -> _Terms:
    """What the SQL's conditions compare of ``alias``'s columns.

    Filters (a column against a value) from the ``WHERE`` on; join terms (a
    column against another table's) anywhere, ``JOIN ... ON`` included.
    """
    terms = _Terms([], [], {}, [], [])
    where = sql.upper().find(" WHERE ")
    for match in _SQL_TERM.finditer(sql):
        left, column = match.group(1) or match.group(2), match.group(3)
        operator = " ".join(match.group(4).upper().split())
        right, right_column = match.group(5) or match.group(6), match.group(7)
        if right is not None:
            # A join term: ours on either side, the other side another table's.
            if operator not in ("=", "==") or left == right or alias not in (left, right):
                continue
            ours, other, other_column = (
                (column, right, right_column) if left == alias else (right_column, left, column)
            )
            if left == alias:
                position = match.start()
            else:
                position = match.start(5 if match.group(5) is not None else 6)
            if _in_call(sql, position) or ours in terms.join:
                continue
            terms.join.append(ours)
            terms.text.append(f"{ours} = {other}.{other_column}")
            continue
        if left != alias or where < 0 or match.start() < where or _in_call(sql, match.start()):
            continue
        if operator in _EQUAL_OPERATORS:
            target = terms.equal
        elif operator in _RANGE_OPERATORS:
            target = terms.ranged
        else:
            continue  # <>, NOT IN, LIKE, IS NOT: not what a B-tree lookup serves
        if column not in terms.equal and column not in terms.ranged:
            target.append(column)
            terms.text.append(f"{column} {operator} ?")
    if where < 0:
        return terms
    for match in _SQL_BOOLEAN.finditer(sql, where):
        if (match.group(2) or match.group(3)) != alias:
            continue
        column = match.group(4)
        if column not in terms.equal and column not in terms.booleans:
            terms.booleans[column] = not match.group(1)
            terms.text.append(f"{'NOT ' if match.group(1) else ''}{column}")
    return terms


def _sqlite_order(sql: str, alias: str) -> list[str]:
    """The outermost query's ORDER BY columns of ``alias``, when it has a LIMIT."""
    top = _top_level(sql)
    if not re.search(r"\bLIMIT\b", top, re.I):
        return []
    clause = re.search(r"\bORDER BY\b(.*?)(?:\bLIMIT\b|\bOFFSET\b|$)", top, re.I | re.S)
    if clause is None:
        return []
    order: list[str] = []
    for part in clause.group(1).split(","):
        match = _SQL_SORT_TERM.match(part)
        if match is None:
            break  # an expression: what follows it cannot use the index in order
        if (match.group(1) or match.group(2)) != alias:
            break  # another table's column: the index cannot deliver that order
        order.append(match.group(3))
    return order


def advise_sqlite(
    plan: list[Any], sql: str, table_rows: TableRows, min_rows: int, location: str | None = None
) -> list[IndexAdvice]:
    """Index advice from SQLite's ``EXPLAIN QUERY PLAN`` rows for ``sql``.

    ``plan`` is the rows as SQLite returns them: ``(id, parent, notused, detail)``.
    The plan says which tables are read whole (``SCAN``); the columns come
    from ``sql`` itself, where Django qualifies every column with its table.
    """
    rows = [(int(row[0]), int(row[1]), str(row[3])) for row in plan]
    details = {node: detail for node, _, detail in rows}
    parent_of = {node: parent for node, parent, _ in rows}
    names = _sqlite_aliases(sql)
    top_sorted = any(
        parent == 0 and detail == "USE TEMP B-TREE FOR ORDER BY" for _, parent, detail in rows
    )
    found: list[IndexAdvice] = []
    loops_seen: set[int] = set()  # query levels (parents) where a loop was already opened
    for _, parent, detail in rows:
        match = _SQLITE_LOOP.match(detail)
        if match is None:
            continue
        inner_loop = parent in loops_seen
        loops_seen.add(parent)
        name = match.group(3) or match.group(2)
        if match.group(3):
            table = match.group(2)
        else:
            tables = names.get(name, {name})
            if len(tables) != 1:
                continue  # an alias two subqueries share: which table is unknown
            (table,) = tables
        rest = match.group(4).strip()
        automatic = _SQLITE_AUTOMATIC.search(rest)
        booleans: dict[str, bool] = {}
        if automatic is not None:
            # SQLite builds this index (a full read and a sort) on every run of the query.
            equal: list[str] = []
            ranged: list[str] = []
            for key in automatic.group(1).split(" AND "):
                key_match = _SQLITE_KEY.match(key)
                if key_match is not None:
                    target = equal if key_match.group(2) == "=" else ranged
                    target.append(key_match.group(1))
            columns = _unique(equal, ranged)
            text = f"{match.group(1)} {table} {rest}: SQLite builds this index on every run"
        elif match.group(1) == "SCAN" and not rest.startswith("USING"):
            terms = _sqlite_terms(sql, name)
            # Read once per outer row: in a correlated subquery, or an inner loop of a join.
            ancestor, correlated = parent, False
            while ancestor:
                correlated = correlated or details.get(ancestor, "").startswith("CORRELATED ")
                ancestor = parent_of.get(ancestor, 0)
            repeated = correlated or inner_loop
            join = terms.join if repeated else []
            order: list[str] = []
            if parent == 0 and not inner_loop and top_sorted:
                order = [c for c in _sqlite_order(sql, name) if c not in terms.equal]
            columns = _unique(join, terms.equal, terms.ranged, order)
            booleans = terms.booleans
            text = f"SCAN {table}"
            if repeated and join:
                text += ", once per outer row" + (
                    " (correlated subquery)" if correlated else " (inner loop of a join)"
                )
            shown = [t for t in terms.text if repeated or "." not in t]
            if shown:
                text += f"  Filter: {' AND '.join(shown)}"
            if order:
                text += f"  (then USE TEMP B-TREE FOR ORDER BY {', '.join(order)} for a LIMIT)"
        else:
            continue  # a search through an index, or a scan of one: served
        if not columns:
            continue
        size = table_rows(table)
        if size is None or size < min_rows:
            continue
        found.append(_advice(table, columns, booleans, size, text, location))
    return found


# --- explaining after a query (the collector calls this) -------------------------------


def _pg_table_rows(raw: Any, alias: str) -> TableRows:
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


def _sqlite_table_rows(raw: Any, alias: str) -> TableRows:
    """A SQLite table's size without counting it (``count(*)`` reads the whole table).

    ``sqlite_stat1`` when ``ANALYZE`` wrote it (each row's first number is the
    rows in the table, or in a partial index: the largest is the table's), else
    ``max(rowid)``, one descent of the table's B-tree: exact for a table never
    deleted from, an overestimate otherwise.
    """

    def size(table: str) -> float | None:
        known = _sizes.get((alias, table))
        now = time.monotonic()
        if known is not None and now - known[1] < _SIZE_TTL:
            return known[0]
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", table) is None:
            return None  # not a name perfkit can quote safely: "(subquery-1)" and the like
        cursor = raw.cursor()
        try:
            rows: float | None = None
            analyzed = cursor.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_stat1'"
            ).fetchone()
            if analyzed:
                stat = cursor.execute("SELECT stat FROM sqlite_stat1 WHERE tbl = ?", [table])
                counts = [int(s.split()[0]) for (s,) in stat if s and s.split()[0].isdigit()]
                rows = float(max(counts)) if counts else None
            if rows is None:
                try:
                    row = cursor.execute(f'SELECT max(rowid) FROM "{table}"').fetchone()
                except Exception:
                    return None  # a WITHOUT ROWID table, a view: size unknown
                rows = float(row[0] or 0)
        finally:
            cursor.close()
        _sizes[(alias, table)] = (rows, now)
        return rows

    return size


class _NotNow(Exception):
    """EXPLAIN must not run now (a failed transaction); try the shape again later."""


def _explain_postgresql(
    connection: Any, raw: Any, sql: str, params: Any, location: str | None, min_rows: int
) -> list[IndexAdvice]:
    import psycopg

    status = raw.info.transaction_status
    if status == psycopg.pq.TransactionStatus.INERROR:
        raise _NotNow
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
            advice = advise(plan, _pg_table_rows(raw, connection.alias), min_rows, location)
            if in_transaction:
                cursor.execute("RELEASE SAVEPOINT perfkit_explain")
        except Exception:
            if in_transaction:
                cursor.execute("ROLLBACK TO SAVEPOINT perfkit_explain")
                cursor.execute("RELEASE SAVEPOINT perfkit_explain")
            raise
    return advice


def _explain_sqlite(
    connection: Any, raw: Any, sql: str, params: Any, location: str | None, min_rows: int
) -> list[IndexAdvice]:
    # Django's own cursor class on the driver's connection: it turns the ORM's %s
    # placeholders into SQLite's ?, and perfkit's collector does not see it.
    from django.db.backends.sqlite3.base import SQLiteCursorWrapper

    cursor = raw.cursor(factory=SQLiteCursorWrapper)
    try:
        # Read-only: no transaction is opened or ended (sqlite3 begins one only
        # before a statement that writes), and an error leaves none broken.
        # The schema's version is in the statement's text: the sqlite3 module
        # keeps prepared statements by text, and a kept EXPLAIN QUERY PLAN
        # answers the plan of when it was prepared, an index dropped since included.
        version = cursor.execute("PRAGMA schema_version").fetchone()[0]
        cursor.execute(f"EXPLAIN QUERY PLAN /* perfkit schema {int(version)} */ {sql}", params)
        plan = cursor.fetchall()
    finally:
        cursor.close()
    text = _inline_booleans(sql, params)
    return advise_sqlite(plan, text, _sqlite_table_rows(raw, connection.alias), min_rows, location)


_COLUMN_EQUALS_PLACEHOLDER = re.compile(r'("\w+"\."\w+")\s*=\s*$')


def _inline_booleans(sql: str, params: Any) -> str:
    """``"t"."flag" = %s`` with ``True`` becomes ``"t"."flag"`` (``NOT ...`` for False).

    Django 6.1 compares a boolean field to a parameter on SQLite where 5.2
    wrote the bare column: either way it is a constant condition, which a
    partial index serves, not an equality column of the index.
    """
    if not isinstance(params, (list, tuple)) or not any(type(p) is bool for p in params):
        return sql
    out: list[str] = []
    position = 0
    for index, match in enumerate(re.finditer(r"%s", sql)):
        if index >= len(params):
            break
        before = sql[position : match.start()]
        value = params[index]
        column = _COLUMN_EQUALS_PLACEHOLDER.search(before) if type(value) is bool else None
        if column is None:
            out.append(sql[position : match.end()])
        else:
            out.append(before[: column.start()])
            out.append(column.group(1) if value else f"NOT {column.group(1)}")
        position = match.end()
    out.append(sql[position:])
    return "".join(out)


_EXPLAINERS: dict[str, Callable[..., list[IndexAdvice]]] = {
    "postgresql": _explain_postgresql,
    "sqlite": _explain_sqlite,
}


def explain_after(
    connection: Any, sql: str, params: Any, site: tuple[str, int, str] | None, shape: str
) -> list[IndexAdvice]:
    """EXPLAIN a ``SELECT`` that just ran on ``connection``; its advice (cached per shape)."""
    key = (connection.vendor, shape)
    known = _verdicts.get(key)
    if known is not None:
        stats["cached"] += 1
        return known
    explainer = _EXPLAINERS.get(connection.vendor)
    if explainer is None:
        return []  # another database: perfkit.W012 said so at startup
    raw = connection.connection
    if raw is None:
        return []
    from django_perfkit.conf import get_settings

    location = None if site is None else f"{_short_path(site[0])}:{site[1]} in {site[2]}"
    min_rows = get_settings().indexes.min_rows
    try:
        advice = explainer(connection, raw, sql, params, location, min_rows)
    except _NotNow:
        stats["failed"] += 1
        return []  # the transaction already failed: not now (not cached)
    except Exception:
        stats["failed"] += 1
        logger.debug("perfkit: could not EXPLAIN %s", shape, exc_info=True)
        advice = []  # remembered: a shape that cannot be explained is not tried again
        _remember(key, advice)
        return advice
    stats["explained"] += 1
    for item in advice:
        item.fingerprint = shape
    _remember(key, advice)
    return advice


def _remember(key: tuple[str, str], advice: list[IndexAdvice]) -> None:
    if len(_verdicts) >= _MAX_CACHED:
        _verdicts.clear()
    _verdicts[key] = advice


def forget() -> None:
    """Drop the cached verdicts and table sizes (after adding an index, in tests)."""
    _verdicts.clear()
    _sizes.clear()
