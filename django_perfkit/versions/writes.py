"""The write watcher: every statement that changes data bumps version tokens.

It is an execute wrapper, like the query collector, so it sees every write
whatever made it: ``save()``, ``delete()``, ``QuerySet.update()`` and
``.delete()``, ``bulk_create``, ``bulk_update``, many-to-many changes (rows of
the through table), ``update_or_create``, raw SQL through a Django cursor, and
migrations. Signals would miss half of these.

How fine the bump is depends on what the statement says (see
:mod:`.tokens` for the token kinds):

* ``UPDATE t SET ... WHERE t.pk = %s`` (``save()``, ``filter(pk=...).update()``)
  and ``DELETE FROM t WHERE t.pk IN (...)`` (``delete()``): the rows are known.
  Their ``f:t:pk:<pk>`` tokens and ``s:t`` are bumped; for each foreign key the
  statement sets, ``f:t:<fk>:<new value>`` (rows that join that list); for a
  foreign key it does not set, ``g:t:<fk>`` (its value is unknown, so every
  list filtered on it goes).
* ``INSERT INTO t (...) VALUES (...)``: ``s:t`` and the new rows' foreign-key
  and primary-key values.
* any other write to ``t`` (a bulk ``UPDATE``, ``TRUNCATE``, DDL): ``t:t``,
  which every entry that read ``t`` depends on.
* a write whose table cannot be read off the statement (a ``WITH`` that
  modifies, a procedure call): the alias's ``epoch``.

When is the bump sent? Outside a transaction, right after the statement, in
one round trip: ``save()`` has not returned yet, so no reader can see the new
row and then a stale entry. Inside ``atomic()``, at commit
(``transaction.on_commit``): a rollback bumps nothing because nothing changed,
and until the commit the tables the transaction wrote are "dirty" for that
connection: its reads of them neither use nor fill the cache.

A write that could not reach Redis is remembered (:func:`.tokens.mark_missed`)
and the alias's cache is not read again until its epoch has been bumped.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, NamedTuple, TypeVar

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from django_perfkit.versions import announced
from django_perfkit.versions.tokens import Tokens, bump, token_value, tokens_for

__all__ = [
    "CommitHook",
    "commit_hook",
    "dirty_tables",
    "install",
    "watch_writes",
    "watcher",
    "write_keys",
]

# Statements that never write, by their first word.
_READ_ONLY = frozenset(
    {
        "SELECT",
        "SAVEPOINT",
        "RELEASE",
        "ROLLBACK",
        "BEGIN",
        "COMMIT",
        "START",
        "SET",
        "SHOW",
        "EXPLAIN",
        "PRAGMA",
        "LOCK",
        "DECLARE",
        "FETCH",
        "CLOSE",
        "VALUES",
        "RESET",
        "DISCARD",
        "LISTEN",
        "NOTIFY",
        "ANALYZE",
        "VACUUM",
    }
)
_FIRST_WORD = re.compile(r"[\s(]*(?:/\*.*?\*/[\s(]*|--[^\n]*\n[\s(]*)*([A-Za-z]+)", re.S)
_WRITE_WORD = re.compile(r"\b(?:INSERT|UPDATE|DELETE|MERGE)\b", re.I)
_MANY_TABLES = re.compile(r"^\s*(?:TRUNCATE|DROP)\b.*(?:,|\bCASCADE\b)", re.I | re.S)
_NAME = r'[`"]?([^`"\s(),]+)[`"]?'
_INSERT = re.compile(
    rf"\s*INSERT\s+(?:OR\s+\w+\s+)?INTO\s+{_NAME}\s*\(([^()]*)\)\s*VALUES\s*(.*)", re.S | re.I
)
_UPDATE = re.compile(rf"\s*UPDATE\s+{_NAME}\s+SET\s+(.*?)\s+WHERE\s+(.*)", re.S | re.I)
_UPDATE_ALL = re.compile(rf"\s*UPDATE\s+{_NAME}", re.I)
_DELETE = re.compile(rf"\s*DELETE\s+FROM\s+{_NAME}(?:\s+WHERE\s+(.*))?\s*$", re.S | re.I)
_TABLE_AFTER = re.compile(
    rf"\s*(?:TRUNCATE(?:\s+TABLE)?|ALTER\s+TABLE(?:\s+IF\s+EXISTS)?(?:\s+ONLY)?"
    rf"|DROP\s+TABLE(?:\s+IF\s+EXISTS)?|CREATE\s+(?:UNIQUE\s+)?INDEX.*?\s+ON"
    rf"|INSERT\s+(?:OR\s+\w+\s+|IGNORE\s+)?INTO|COPY|REPLACE\s+INTO|MERGE\s+INTO|DROP\s+INDEX.*?\s+ON)\s+{_NAME}",
    re.S | re.I,
)
_INSERT_OR = re.compile(r"\s*INSERT\s+(?:OR|IGNORE)\s", re.I)
_ROWS = re.compile(r"\(([^()]*)\)")
_COLUMN = re.compile(r'[`"]?([^`"\s,]+)[`"]?')


class TableInfo:
    """What the watcher needs of a model's table: its primary key and foreign keys."""

    __slots__ = ("pk", "fks")

    def __init__(self, pk: str, fks: tuple[str, ...]) -> None:
        self.pk = pk
        self.fks = fks


_tables: dict[str, TableInfo] | None = None


def table_info(table: str) -> TableInfo | None:
    """The primary key and foreign-key columns of a model table (None for other tables)."""
    global _tables
    if _tables is None:
        from django.apps import apps

        found: dict[str, TableInfo] = {}
        for model in apps.get_models(include_auto_created=True):
            meta = model._meta
            if meta.proxy or not meta.managed and meta.db_table in found:
                continue
            fks = tuple(
                str(field.column)
                for field in meta.concrete_fields
                if field.is_relation and (field.many_to_one or field.one_to_one)
            )
            pk: Any = meta.pk
            found[meta.db_table] = TableInfo(str(pk.column), fks)
        _tables = found
    return _tables.get(table)


def _pk_column(table: str) -> str | None:
    info = table_info(table)
    return info.pk if info is not None else None


def _unquote(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def _pk_values(where: str, table: str, info: TableInfo, params: list[Any]) -> list[Any] | None:
    """The rows of ``WHERE t.pk = %s`` / ``WHERE t.pk IN (%s, ...)`` (the last params)."""
    where = where.strip()
    m = re.fullmatch(
        rf'(?:[`"]?{re.escape(table)}[`"]?\.)?[`"]?{re.escape(info.pk)}[`"]?\s*'
        r"(=\s*%s|IN\s*\(\s*%s(?:\s*,\s*%s)*\s*\))",
        where,
        re.I,
    )
    if m is None:
        return None
    count = m.group(1).count("%s")
    if count > len(params):
        return None
    return params[len(params) - count :]


class _Slot:
    """A stand-in for the i-th parameter while a statement is read once."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


class _SlotKey(NamedTuple):
    """A value token whose value is a parameter: filled in per execution."""

    table: str
    column: str
    position: int
    #: The token's key up to its value (what :meth:`Tokens.value` puts before it).
    prefix: str


class _RecordingTokens(Tokens):
    """Tokens that leave a parameter's value token as a :class:`_SlotKey`."""

    def value(self, table: str, column: str, value: Any) -> Any:
        if isinstance(value, _Slot):
            return _SlotKey(table, column, value.index, f"{self.base}f:{table}:{column}:")
        return super().value(table, column, value)


_Recipe = list[Any] | None  # str keys and _SlotKeys; None: the epoch
_recipes: dict[tuple[str, str, bool, int], _Recipe] = {}
_RECIPES_MAX = 2048


def write_keys(tokens: Tokens, sql: str, params: Any, many: bool) -> list[str] | None:
    """The tokens a statement bumps; ``[]`` for a statement that writes nothing.

    ``None`` means "cannot tell which table": bump the alias's epoch.

    A statement is read once per text: the same ``save()`` sends the same SQL
    with other parameters, so what is kept is a recipe whose value tokens are
    filled in from each execution's parameters (a dict lookup, not a parse).
    """
    positional = not many and isinstance(params, (list, tuple))
    cache_key = (tokens.base, sql, many, len(params) if positional else -1)
    recipe = _recipes.get(cache_key, _MISSING)
    if recipe is _MISSING:
        recording = _RecordingTokens.from_base(tokens.base, tokens.alias)
        stand_ins = [_Slot(i) for i in range(len(params))] if positional else params
        recipe = _read_statement(recording, sql, stand_ins, many)
        if recipe:
            # Every written table's w: token too, for cache on write (left out
            # again, per execution, when a model signal announced the write).
            written = dict.fromkeys(
                _table_of(tokens, key) if type(key) is str else key.table for key in recipe
            )
            recipe.extend(tokens.key("w", table) for table in written)
        if len(_recipes) >= _RECIPES_MAX:
            _recipes.clear()
        _recipes[cache_key] = recipe
    if recipe is None:
        return None
    keys: list[str] = []
    for key in recipe:
        if type(key) is str:
            keys.append(key)
        else:
            value = params[key.position]
            if value is not None:
                # Tokens.value(), without its two calls: run for every save.
                keys.append(key.prefix + (str(value) if type(value) is int else token_value(value)))
    return keys


_MISSING: Any = object()


def _read_statement(tokens: Tokens, sql: str, params: Any, many: bool) -> list[Any] | None:
    m = _FIRST_WORD.match(sql)
    if m is None:
        return None
    word = m.group(1).upper()
    if word == "EXPLAIN":
        # EXPLAIN ANALYZE runs the statement.
        return None if "ANALYZE" in sql.upper() and _WRITE_WORD.search(sql) else []
    if word in _READ_ONLY:
        return []
    if word == "WITH":
        return None if _WRITE_WORD.search(sql) else []
    if _MANY_TABLES.match(sql):
        return None  # TRUNCATE a, b / ... CASCADE: more tables than the first
    plist: list[Any] | None
    if many or params is None:
        plist = None if many else []
    elif isinstance(params, (list, tuple)):
        plist = list(params)
    else:
        plist = None  # named parameters: no positional reading
    handler = _HANDLERS.get(word)
    if handler is None:
        return _coarse(tokens, sql)
    pattern, keys_for = handler
    match = None if word == "INSERT" and _INSERT_OR.match(sql) else pattern.match(sql)
    if match is None:
        return _coarse(tokens, sql)
    return keys_for(tokens, _unquote(match.group(1)), match, plist)


def _coarse(tokens: Tokens, sql: str) -> list[str] | None:
    m = _TABLE_AFTER.match(sql) or _UPDATE_ALL.match(sql)
    if m is None:
        return None
    return [tokens.table(_unquote(m.group(1)))]


def _insert_keys(
    tokens: Tokens, table: str, match: re.Match[str], params: list[Any] | None
) -> list[str]:
    columns, values = match.group(2), match.group(3)
    info = table_info(table)
    if info is None or params is None:
        return [tokens.table(table)]
    names = [_unquote(c) for c in _COLUMN.findall(columns)]
    # VALUES (...), (...) [RETURNING ...]; anything else (PostgreSQL's UNNEST
    # form of bulk_create, INSERT ... SELECT) is a coarse write.
    body = values.split(" RETURNING ")[0].strip()
    if " ON CONFLICT" in body.upper() or " ON DUPLICATE" in body.upper():
        return [tokens.table(table)]
    rows = _ROWS.findall(body)
    if not rows or _ROWS.sub("", body).replace(",", "").strip():
        return [tokens.table(table)]
    keys = [tokens.scan(table)]
    position = 0
    watched = {info.pk, *info.fks}
    for row in rows:
        cells = [c.strip() for c in row.split(",")]
        if len(cells) != len(names):
            return [tokens.table(table)]
        for name, cell in zip(names, cells, strict=True):
            if cell == "%s":
                if position >= len(params):
                    return [tokens.table(table)]
                value = params[position]
                position += 1
                if name in watched and value is not None:
                    keys.append(tokens.value(table, name, value))
            elif "%s" in cell:
                return [tokens.table(table)]
            elif name in info.fks and cell.upper() != "NULL":
                keys.append(tokens.generation(table, name))
    if position != len(params):
        return [tokens.table(table)]
    for fk in info.fks:
        if fk not in names:
            keys.append(tokens.generation(table, fk))
    return keys


def _update_keys(
    tokens: Tokens, table: str, match: re.Match[str], params: list[Any] | None
) -> list[str]:
    assignments, where = match.group(2), match.group(3)
    info = table_info(table)
    if info is None or params is None:
        return [tokens.table(table)]
    pks = _pk_values(where, table, info, params)
    if pks is None:
        return [tokens.table(table)]
    keys = [tokens.scan(table), *(tokens.value(table, info.pk, pk) for pk in pks)]
    set_params = params[: len(params) - len(pks)]
    if assignments.count("%s") != len(set_params):
        return [tokens.table(table)]
    position = 0
    assigned: dict[str, str] = {}
    for part in _split_top_level(assignments):
        name, _, value = part.partition("=")
        column = _unquote(name.strip().strip('`"'))
        value = value.strip()
        if value == "%s":
            assigned[column] = "%s"
            if column in info.fks:
                fk_value = set_params[position]
                if fk_value is not None:
                    keys.append(tokens.value(table, column, fk_value))
        else:
            assigned[column] = value
            if column in info.fks and value.upper() != "NULL":
                keys.append(tokens.generation(table, column))
        position += value.count("%s")
    if info.pk in assigned:
        # A primary key that changes: its old and new rows are both affected.
        return [tokens.table(table)]
    for fk in info.fks:
        if fk not in assigned:
            keys.append(tokens.generation(table, fk))
    return keys


def _delete_keys(
    tokens: Tokens, table: str, match: re.Match[str], params: list[Any] | None
) -> list[str]:
    info = table_info(table)
    where = match.group(2)
    if info is None or where is None or params is None:
        return [tokens.table(table)]
    pks = _pk_values(where, table, info, params)
    if pks is None:
        return [tokens.table(table)]
    return [tokens.scan(table), *(tokens.value(table, info.pk, pk) for pk in pks)]


_KeysFor = Callable[[Tokens, str, "re.Match[str]", "list[Any] | None"], list[str]]
_HANDLERS: dict[str, tuple[re.Pattern[str], _KeysFor]] = {
    "INSERT": (_INSERT, _insert_keys),
    "UPDATE": (_UPDATE, _update_keys),
    "DELETE": (_DELETE, _delete_keys),
}


# -- transactions ---------------------------------------------------------------


class CommitHook:
    """A ``transaction.on_commit`` callable that perfkit merges per savepoint level.

    One per transaction and savepoint level, not one per statement: a rollback
    to a savepoint drops exactly the hooks made inside it (Django trims
    ``run_on_commit`` by savepoint ids). Subclasses say when they run with
    ``rank``: ahead of the project's own hooks, lower ranks first.
    """

    __slots__ = ("__qualname__", "sids")
    rank = 0

    def __init__(self, sids: tuple[str, ...]) -> None:
        # Django names a failed commit hook by its __qualname__.
        self.__qualname__ = f"django_perfkit.{type(self).__name__}"
        self.sids = sids

    def __call__(self) -> None:
        raise NotImplementedError


H = TypeVar("H", bound=CommitHook)


def commit_hook(connection: BaseDatabaseWrapper, kind: Callable[[tuple[str, ...]], H]) -> H:
    """The ``kind`` hook of the connection's current savepoint level (made if missing)."""
    sids = tuple(connection.savepoint_ids)
    hooks: list[Any] = connection.run_on_commit
    for _sids, func, _robust in hooks:
        if type(func) is kind and func.sids == sids:
            return func  # type: ignore[no-any-return]
    hook = kind(sids)
    # Ahead of the project's own hooks: Django stops running hooks at the first
    # one that raises, and a bump must never be the one left out. (on_commit()
    # itself only appends; the entry has its form: savepoint ids, func, robust.)
    position = 0
    for _sids, func, _robust in hooks:
        if not isinstance(func, CommitHook) or func.rank > hook.rank:
            break
        position += 1
    hooks.insert(position, (set(connection.savepoint_ids), hook, True))
    return hook


class _Pending(CommitHook):
    """The tokens a transaction's writes will bump when it commits, and their tables."""

    __slots__ = ("alias", "keys", "tables")

    def __init__(self, sids: tuple[str, ...]) -> None:
        super().__init__(sids)
        self.alias = ""
        self.keys: dict[str, None] = {}
        self.tables: set[str] = set()

    def __call__(self) -> None:
        bump(self.alias, list(self.keys))


def dirty_tables(connection: BaseDatabaseWrapper) -> set[str]:
    """Tables written by the connection's open transaction (``"*"``: unknown ones).

    Read off the pending bumps in ``connection.run_on_commit``, which Django
    itself empties on commit and rollback and trims on a savepoint rollback, so
    this is exact without perfkit tracking transactions.
    """
    tables: set[str] = set()
    hooks: list[Any] = connection.run_on_commit
    for _sids, func, _robust in hooks:
        if isinstance(func, _Pending):
            tables |= func.tables
    return tables


def _defer(
    connection: BaseDatabaseWrapper, tokens: Tokens, keys: list[str], tables: set[str]
) -> None:
    pending = commit_hook(connection, _Pending)
    pending.alias = tokens.alias
    pending.keys.update(dict.fromkeys(keys))
    pending.tables |= tables


#: Tables read while a cache entry is being computed (see the ``cache`` package).
reading: ContextVar[set[str] | None] = ContextVar("perfkit_tables_read", default=None)
_FROM = re.compile(r'(?:FROM|JOIN)\s+[`"]([^`"]+)[`"]', re.I)


def tables_named(sql: str) -> list[str]:
    """Every quoted table after ``FROM`` or ``JOIN``, subqueries included, repeats kept.

    The one reading of a query's tables: what a cache entry is planned to depend
    on (``django_perfkit.cache.analysis``) and what its computation is seen to
    read (below) must be read off the SQL the same way for the two to compare.
    """
    return _FROM.findall(sql)


def _table_of(tokens: Tokens, key: str) -> str:
    # "<base>t:news_article", "<base>f:news_article:id:3", ...
    return key[len(tokens.base) :].split(":", 2)[1]


def watch_writes(
    execute: Callable[..., Any],
    sql: str,
    params: Any,
    many: bool,
    context: dict[str, Any],
) -> Any:
    """Bump the version tokens of what each statement writes (all connections).

    Reads pass through with one ``str.startswith``. A function, not an object
    with ``__call__``, for the query collector's reason: Django calls every
    wrapper through ``functools.partial``, on every statement.
    """
    if type(sql) is str and sql.startswith("SELECT"):
        seen = reading.get()
        if seen is not None:
            seen.update(tables_named(sql))
        return execute(sql, params, many, context)
    try:
        result = execute(sql, params, many, context)
    except BaseException:
        # A failed statement may still have changed rows (an executemany
        # that stopped half-way under autocommit): bump as if it had.
        _after(sql, params, many, context)
        raise
    _after(sql, params, many, context)
    return result


def _after(sql: Any, params: Any, many: bool, context: dict[str, Any]) -> None:
    """After a statement that may write: bump what it changed, now or at commit."""
    connection = context["connection"]
    tokens = tokens_for(connection.alias)
    keys: list[str] | None
    if type(sql) is not str:
        keys = None  # a composed statement (psycopg.sql): cannot read it
    else:
        try:
            keys = write_keys(tokens, sql, params, many)
        except Exception:  # a parser bug must not fail the write: bump coarsely
            keys = None
    if keys == []:
        seen_reads = reading.get()
        if seen_reads is not None and type(sql) is str:
            seen_reads.update(tables_named(sql))
        return
    seen = reading.get()
    if seen is not None:
        seen.add("*")  # a write while computing an entry: never store it
    if keys and announced._current.get():
        insert = type(sql) is str and sql.lstrip()[:6].upper() == "INSERT"
        quiet = announced.covered(tokens.base, keys, _pk_column, insert)
        if quiet:
            drop = {tokens.key("w", table) for table in quiet}
            keys = [key for key in keys if key not in drop]
    if connection.in_atomic_block:
        if keys is None:
            _defer(connection, tokens, [tokens.epoch], {"*"})
        else:
            _defer(connection, tokens, keys, {_table_of(tokens, key) for key in keys})
    else:
        bump(tokens.alias, keys if keys is not None else [tokens.epoch])


#: The name the rest of perfkit (and the benchmarks) know the wrapper by.
watcher = watch_writes


def install(connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """Put the watcher on one connection (idempotent). A ``connection_created`` receiver."""
    if watcher not in connection.execute_wrappers:
        connection.execute_wrappers.append(watcher)


def install_on_all_connections() -> None:
    for connection in connections.all(initialized_only=True):
        install(connection)


def install_everywhere() -> None:
    """Watch the writes of every connection, open and future (idempotent)."""
    from django.db.backends.signals import connection_created

    connection_created.connect(install, dispatch_uid="django_perfkit.versions")
    install_on_all_connections()


def reset_state() -> None:
    global _tables
    _tables = None
    _recipes.clear()
