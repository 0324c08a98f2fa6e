"""What a cached queryset evaluation is keyed by, and which version tokens it depends on.

The key is a hash of the compiled SQL and its parameters (plus what turns rows
into results: the iterable class, prefetches, the kind of evaluation). The
dependencies are read off the same SQL (every table after ``FROM`` and
``JOIN``, subqueries included) and off the ``WHERE`` tree: a top-level
``pk = v`` or ``<foreign key> = v`` condition on the base table lets the entry
depend on that value's token instead of on every write to the table (see
:mod:`django_perfkit.versions.tokens` for the token kinds).
"""

from __future__ import annotations

import enum
import hashlib
import io
import pickle
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import EmptyResultSet, FieldDoesNotExist
from django.db import models
from django.db.models.expressions import BaseExpression, Col, RawSQL, Window
from django.db.models.fields.reverse_related import ForeignObjectRel
from django.db.models.lookups import Exact
from django.db.models.options import Options
from django.db.models.sql.query import Query
from django.db.models.sql.where import AND, ExtraWhere
from django.utils import timezone
from django.utils.functional import Promise
from django.utils.tree import Node

from django_perfkit.versions.tokens import Tokens
from django_perfkit.versions.writes import tables_named

__all__ = ["Plan", "fine_condition", "plan", "prefetch_tables", "query_sql", "tables_in"]


def tables_in(sql: str) -> set[str]:
    """Every table named after ``FROM`` or ``JOIN`` (subqueries included)."""
    return set(tables_named(sql))


def query_sql(queryset: models.QuerySet[Any]) -> tuple[str, tuple[Any, ...]]:
    """The queryset's SQL and parameters (``EmptyResultSet`` propagates)."""
    # On a copy: compiling sets up joins and aliases on the query it compiles,
    # which would change the state the entry is named by.
    sql, params = queryset.query.chain().get_compiler(using=queryset.db).as_sql()
    return sql, tuple(params)


def fingerprint(queryset: Any) -> bytes | None:
    """The queryset's whole state, pickled: what its entry is named by.

    Pickling the ``Query`` costs 15-20 µs where compiling it to SQL costs
    80-260 µs, and it is as exact: two queries whose state pickles to the same
    bytes are the same query, so they compile to the same SQL. (Two equal
    queries built in different orders may pickle differently; that costs a
    miss, never a wrong answer.) ``None`` when something in it cannot be
    pickled: the entry is then named by its SQL.
    """
    out = io.BytesIO()
    try:
        _StatePickler(out, protocol=5).dump(_queryset_state(queryset))
    except Exception:  # an unpicklable value in a filter or an expression
        return None
    return out.getvalue()


#: ``cached_property`` values that Django derives from an expression's own state
#: when a query is compiled. Only these are left out: a name such as
#: ``output_field`` is also *set* by constructors (``Cast(x, output_field=...)``)
#: and carries meaning, so it stays, at the cost of, at worst, a miss.
_DERIVED = frozenset(
    {
        "contains_aggregate",
        "contains_over_clause",
        "contains_column_references",
        "_output_field_or_none",
        "identity",
        "allowed_default",
        "convert_value",
    }
)


class _StatePickler(pickle.Pickler):
    """Pickles a query's state without the values it caches on first use.

    Expressions, lookups and where nodes fill ``cached_property`` values
    (``contains_aggregate``, ``output_field``...) when a query is compiled, and
    some of those objects (a field's ``cached_col``) are shared by every query
    that uses the field: without this, the same query would be named
    differently before and after any query on its fields was compiled. The
    bytes are only hashed, never unpickled.
    """

    def reducer_override(self, obj: Any) -> Any:
        # Called for every object that is not a plain value: the branch is
        # decided once per class.
        cls = type(obj)
        kind = _KINDS.get(cls)
        if kind is None:
            kind = _KINDS[cls] = _kind_of(cls)
        if kind is _Kind.OTHER:
            return NotImplemented  # fields, models: their own (by-reference) pickling
        if kind is _Kind.QUERYSET:
            # A queryset among the arguments (filter(id__in=other)): by its
            # query, never by pickling it, which would run it.
            return (cls, ("queryset", _queryset_state(obj)))
        if kind is _Kind.PROMISE:
            # gettext_lazy("Red"): by the text it has now, in the active
            # language, as the query will use it.
            return (str, (str(obj),))
        if kind is _Kind.REL:
            # Shared by every query through the relation, and it caches
            # (many_to_many, cache_name...): named by its field instead.
            return (cls, ("rel", obj.field.model._meta.label_lower, obj.field.name))
        if kind is _Kind.OPTIONS:
            return (cls, ("opts", obj.label_lower))
        if kind is _Kind.FIELD:
            if hasattr(obj, "model"):
                return NotImplemented  # a model's field: pickled by reference
            # An unbound field (output_field=CharField()): its state, without the
            # counter every new Field instance increments.
            return (cls, (), {k: v for k, v in obj.__dict__.items() if k != "creation_counter"})
        state = obj.__dict__
        if kind is _Kind.QUERY:
            return (cls, (), _query_state(state))
        # One form for every expression, whether or not it has cached anything yet.
        return (cls, (), {k: v for k, v in state.items() if k not in _DERIVED})


class _Kind(enum.Enum):
    OTHER = 0
    REL = 1
    OPTIONS = 2
    QUERY = 3
    EXPRESSION = 4
    FIELD = 5
    QUERYSET = 6
    PROMISE = 7


_KINDS: dict[type, _Kind] = {}


def _kind_of(cls: type) -> _Kind:
    if issubclass(cls, models.QuerySet):
        return _Kind.QUERYSET
    if issubclass(cls, Promise):
        return _Kind.PROMISE
    if issubclass(cls, ForeignObjectRel):
        return _Kind.REL
    if issubclass(cls, Options):
        return _Kind.OPTIONS
    if issubclass(cls, Query):
        return _Kind.QUERY
    if issubclass(cls, models.Field):
        return _Kind.FIELD
    if issubclass(cls, (BaseExpression, Node)) and not issubclass(cls, type):
        return _Kind.EXPRESSION
    return _Kind.OTHER


def _query_state(state: dict[str, Any]) -> dict[str, Any]:
    # Joins a compile set up and then found unused stay behind with a reference
    # count of 0; they are not in the SQL, so not in the name.
    state = {k: v for k, v in state.items() if k not in _DERIVED and k != "base_table"}
    deferred = state.get("deferred_loading")
    if deferred is not None:  # a set of names: its order differs between processes
        state["deferred_loading"] = (sorted(deferred[0]), deferred[1])
    refcount = state.get("alias_refcount", {})
    unused = {alias for alias, count in refcount.items() if not count}
    if unused:
        state["alias_refcount"] = {a: c for a, c in refcount.items() if c}
        state["alias_map"] = {
            a: j for a, j in state.get("alias_map", {}).items() if a not in unused
        }
        state["table_map"] = {
            t: [a for a in aliases if a not in unused]
            for t, aliases in state.get("table_map", {}).items()
            if any(a not in unused for a in aliases)
        }
    return state


def _queryset_state(queryset: Any) -> tuple[Any, ...]:
    lookups = [
        (lookup.prefetch_through, lookup.prefetch_to, _queryset_state(lookup.queryset))
        if isinstance(lookup, models.Prefetch) and lookup.queryset is not None
        else (lookup.prefetch_through, lookup.prefetch_to)
        if isinstance(lookup, models.Prefetch)
        else str(lookup)
        for lookup in queryset._prefetch_related_lookups
    ]
    return (
        queryset.query,
        lookups,
        queryset._iterable_class.__qualname__,
        queryset._fields,
        # Date lookups and truncations are computed in the active time zone.
        timezone.get_current_timezone_name() if settings.USE_TZ else "",
    )


def call_state(*values: Any) -> str | None:
    """A hash of call arguments (``get()``'s, ``aggregate()``'s); None if unpicklable."""
    out = io.BytesIO()
    try:
        _StatePickler(out, protocol=5).dump(values)
    except Exception:
        return None
    return hashlib.blake2b(out.getvalue(), digest_size=12).hexdigest()


def entry_name(queryset: Any, kind: str, extra: str, state: bytes) -> str:
    """A short hash naming the entry: the model, the evaluation and the query's state."""
    meta = queryset.model._meta
    digest = hashlib.blake2b(digest_size=16)
    digest.update(
        f"{meta.label}|{kind}|{extra}|{queryset._iterable_class.__qualname__}|"
        f"{queryset._fields}|".encode()
    )
    digest.update(state)
    return digest.hexdigest()


def sql_state(sql: str, params: tuple[Any, ...], queryset: Any) -> bytes:
    """The fallback state for :func:`entry_name`: SQL, parameters and prefetches."""
    lookups = ",".join(_lookup_repr(lookup) for lookup in queryset._prefetch_related_lookups)
    return f"sql|{sql}|{params!r}|{lookups}".encode()


def _lookup_repr(lookup: Any) -> str:
    if isinstance(lookup, models.Prefetch):
        query = "" if lookup.queryset is None else str(lookup.queryset.query)
        return f"P({lookup.prefetch_through};{lookup.prefetch_to};{query})"
    return str(lookup)


def fine_condition(queryset: models.QuerySet[Any]) -> tuple[str, Any, str] | None:
    """``(column, value, kind)`` of the best top-level equality filter on the base table.

    ``kind``: ``"pk"``, ``"unique"`` (another unique column: ``slug = v``) or
    ``"fk"``; ``None`` when there is none (the entry then depends on every write
    to the table).
    """
    query = queryset.query
    where = query.where
    if where.connector != AND or where.negated or query.combinator or query.low_mark:
        # An offset: a write to a row before the window moves the window.
        return None
    # Not query.base_table: that is a cached_property, and read on a query whose
    # joins are not set up yet it would cache None for the query's lifetime.
    base = next(iter(query.alias_map), None)
    if base is None:
        return None
    unique: tuple[str, Any, str] | None = None
    found: tuple[str, Any, str] | None = None
    for child in where.children:
        if not isinstance(child, Exact):
            continue
        lhs, rhs = child.lhs, child.rhs
        if not isinstance(lhs, Col) or lhs.alias != base:
            continue
        target = lhs.target
        if target.unique and not target.null and unique is None and not target.primary_key:
            # The entry depends on the found row's own token, not on the value.
            unique = (target.column, rhs, "unique")
            continue
        # Value tokens only for integers: a write names its value as the driver
        # gets it (a UUID may be its hex, a string compares case-insensitively
        # under some collations), and only an int is spelled the same both ways.
        if type(rhs) is not int:
            continue
        if target.primary_key:
            return (target.column, rhs, "pk")
        if found is None and target.is_relation and (target.many_to_one or target.one_to_one):
            found = (target.column, rhs, "fk")
    return unique or found


def _expressions(query: Any) -> Any:
    """Every expression of a query: where, annotations, ordering; subqueries too."""
    stack = [query.where, *query.annotations.values()]
    stack += [o for o in query.order_by if not isinstance(o, str)]
    while stack:
        node = stack.pop()
        yield node
        children = getattr(node, "children", None)
        if children is not None:
            stack.extend(children)
            continue
        inner = getattr(node, "query", None)
        if isinstance(inner, Query):
            stack += [inner.where, *inner.annotations.values()]
        if hasattr(node, "get_source_expressions"):
            stack.extend(e for e in node.get_source_expressions() if e is not None)
        for side in ("lhs", "rhs"):
            value = getattr(node, side, None)
            if value is not None and hasattr(value, "resolve_expression"):
                stack.append(value)
            if isinstance(value, Query):
                stack += [value.where, *value.annotations.values()]


def _has_raw_sql(query: Any) -> bool:
    if query.extra or query.extra_tables:
        return True
    return any(isinstance(node, (RawSQL, ExtraWhere)) for node in _expressions(query))


def _has_window(query: Any) -> bool:
    return any(isinstance(node, Window) for node in _expressions(query))


def prefetch_tables(model: type[models.Model], lookups: tuple[Any, ...]) -> set[str] | None:
    """Tables the prefetches will read (``None`` when a lookup cannot be followed)."""
    tables: set[str] = set()
    for lookup in lookups:
        if isinstance(lookup, models.Prefetch):
            path = lookup.prefetch_through
            if lookup.queryset is not None:
                tables.add(lookup.queryset.model._meta.db_table)
                inner = lookup.queryset
                if _has_raw_sql(inner.query):
                    return None
                try:  # its joins and subqueries
                    inner_sql = inner.query.chain().get_compiler(using=inner.db).as_sql()[0]
                except EmptyResultSet:
                    inner_sql = ""
                except Exception:  # cannot compile it here: cannot plan for it
                    return None
                tables |= tables_in(inner_sql)
                if inner._prefetch_related_lookups:
                    nested = prefetch_tables(inner.model, tuple(inner._prefetch_related_lookups))
                    if nested is None:
                        return None
                    tables |= nested
        else:
            path = str(lookup)
        current = model
        for part in path.split("__"):
            try:
                fld: Any = current._meta.get_field(part)
            except FieldDoesNotExist:
                return None
            related = getattr(fld, "related_model", None)
            if not fld.is_relation or related is None or isinstance(related, str):
                return None
            if fld.many_to_many:
                through = getattr(fld, "through", None) or fld.remote_field.through
                tables.add(through._meta.db_table)
            current = related
            tables.add(current._meta.db_table)
    return tables


@dataclass(slots=True)
class Plan:
    """The tokens one evaluation reads before it runs and records when it is stored."""

    tokens: Tokens
    base: str
    #: Every table the evaluation may read.
    tables: set[str]
    #: Token keys read before the query runs (their values are compared at store time).
    static: list[str] = field(default_factory=list)
    #: Of ``static``: the ones the entry depends on whatever the result.
    always: set[str] = field(default_factory=set)
    #: The base table's scan token, when it may be only a guard.
    scan: str = ""
    #: ``pk = v``: the scan token is needed only for an empty result.
    pk_fine: bool = False
    #: ``fk = v`` (or ``unique = v``): rows of the result become dependencies,
    #: when they are model rows.
    fk_fine: bool = False
    #: ``unique = v``: an empty result needs the scan token (any insert may match).
    unique_fine: bool = False
    pk_column: str = ""

    def flags(
        self, result_kind: str, rows: Any, read: set[str] | None = None
    ) -> tuple[str, list[str]]:
        """Which static keys the entry depends on ("1"/"0" per key), and its row tokens.

        ``read``: the tables its computation read by SQL (used by fragments).
        """
        row_keys: list[str] = []
        scan_needed = True
        if result_kind == "get":  # one instance, from get()
            result_kind, rows = "rows", [rows]
        if self.pk_fine:
            scan_needed = result_kind != "rows" or not rows
        elif (
            self.fk_fine
            and result_kind == "rows"
            and _model_rows(rows)
            and (rows or not self.unique_fine)
        ):
            scan_needed = False
            seen: set[Any] = set()
            for row in rows:
                pk = row.pk
                if pk not in seen:
                    seen.add(pk)
                    row_keys.append(self.tokens.value(self.base, self.pk_column, pk))
        flags = "".join(
            "1" if key in self.always or (key == self.scan and scan_needed) else "0"
            for key in self.static
        )
        return flags, row_keys


def _model_rows(rows: Any) -> bool:
    # Rows whose primary keys are ints: their tokens are spelled as writes spell them.
    return isinstance(rows, list) and all(
        isinstance(row, models.Model) and type(row.pk) is int for row in rows
    )


def plan(queryset: Any, sql: str, tokens: Tokens) -> Plan | None:
    """The plan for one evaluation, or ``None`` when its reads cannot be known."""
    model = queryset.model
    base = model._meta.db_table
    if _has_raw_sql(queryset.query):
        return None  # tables perfkit cannot read off the SQL
    named = tables_named(sql)
    tables = set(named) | {base}
    if queryset._prefetch_related_lookups:
        extra = prefetch_tables(model, tuple(queryset._prefetch_related_lookups))
        if extra is None:
            return None
        tables |= extra
    result = Plan(tokens=tokens, base=base, tables=tables)
    static = [tokens.epoch, tokens.table(base)]
    always = set(static)
    result.scan = tokens.scan(base)
    static.append(result.scan)
    # A row of the result depends only on itself unless the query reads its
    # own table again (a self-join, a subquery on it) or ranks rows (a window).
    self_reading = named.count(base) > 1 or _has_window(queryset.query)
    fine = None if self_reading else fine_condition(queryset)
    if fine is not None:
        column, value, kind = fine
        if kind == "pk":
            value_key = tokens.value(base, column, value)
            static.append(value_key)
            always.add(value_key)
            result.pk_fine = True
        elif kind == "unique":
            # A unique value names at most one row: a found row is covered by
            # its own token (a row can only take the value from a row that
            # gave it up, whose token moved); a miss needs the scan token.
            result.fk_fine = result.unique_fine = True
            result.pk_column = _pk_column(model)
        else:
            value_key = tokens.value(base, column, value)
            generation = tokens.generation(base, column)
            static += [value_key, generation]
            always |= {value_key, generation}
            result.fk_fine = True
            result.pk_column = _pk_column(model)
    else:
        always.add(result.scan)
    for table in sorted(tables - {base}):
        for key in (tokens.table(table), tokens.scan(table)):
            static.append(key)
            always.add(key)
    result.static = static
    result.always = always
    return result


def _pk_column(model: type[models.Model]) -> str:
    pk: Any = model._meta.pk
    return str(pk.column)
