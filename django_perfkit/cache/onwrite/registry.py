"""Which functions depend on which models, and the signal receivers that refresh them.

A function is registered when it is decorated (or, if the models are not
loaded yet, when perfkit's app is ready). Registering connects one set of
receivers per dependency model (and per many-to-many table of one), shared by
every function that depends on it:

* ``pre_save`` / ``m2m_changed`` ``pre_*``: announce the write that follows
  (:mod:`django_perfkit.versions.announced`), so it does not invalidate the
  other entries, when every function reading the table is one these
  receivers refresh; ``pre_save`` of a row loaded from the database also
  reads it as stored, for its old mapping (a comment moved from article A to
  B refreshes both). Deletes are not announced: they also invalidate.
* ``post_save`` / ``post_delete`` / ``m2m_changed`` ``post_*``: map the
  instance to the entries it affects and refresh them once the transaction
  commits (:class:`Refresh`): bump their own tokens, then recompute the ones
  that are stored, now or in the background worker (``defer=True``). A
  rollback drops the hook, and with it the refresh: nothing changed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, models
from django.db.models import Q, signals

from django_perfkit.redis import LuaScript, get_gateway
from django_perfkit.versions.announced import Announcement, announce, sender_frame, withdraw
from django_perfkit.versions.tokens import bump, tokens_for
from django_perfkit.versions.writes import CommitHook, commit_hook

if TYPE_CHECKING:
    from django_perfkit.cache.onwrite.function import DependencyMapping, OnWriteFunction

logger = logging.getLogger("django_perfkit.cache")

_lock = threading.RLock()
_functions: list[OnWriteFunction[Any, Any]] = []
_waiting: list[OnWriteFunction[Any, Any]] = []
#: Concrete model -> the functions depending on it, each with its mapping.
_by_model: dict[type[models.Model], list[tuple[OnWriteFunction[Any, Any], DependencyMapping]]] = {}
_connected: set[Any] = set()

#: One affected entry: the function, its arguments by name (None: every entry
#: of the function, when a mapping failed) and the text naming the entry.
Item = tuple["OnWriteFunction[Any, Any]", "dict[str, Any] | None", str]


#: KEYS: entries. 1 for each that is stored (valid or not), else 0.
PRESENT = LuaScript(
    """
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('EXISTS', KEYS[i])
end
return out
""",
    name="cache.present",
)


def add(function: OnWriteFunction[Any, Any]) -> None:
    with _lock:
        for other in list(_functions):
            if other.name != function.name:
                continue
            if _defined_at(other) != _defined_at(function):
                raise ImproperlyConfigured(
                    f"Two @cached_on_write functions are named {function.name}: their "
                    "entries would be one another's. Give each a name of its own."
                )
            remove(other)  # the same definition again (a module reloaded)
        _functions.append(function)
        if apps.models_ready:
            _register(function)
        else:
            _waiting.append(function)


def _defined_at(function: OnWriteFunction[Any, Any]) -> tuple[str, int]:
    code = getattr(function.func, "__code__", None)
    return (code.co_filename, code.co_firstlineno) if code is not None else ("", id(function))


def register_waiting() -> None:
    """Register the functions decorated before the models were loaded (``ready()``)."""
    with _lock:
        while _waiting:
            _register(_waiting.pop(0))


def functions() -> list[OnWriteFunction[Any, Any]]:
    return list(_functions)


def remove(function: OnWriteFunction[Any, Any]) -> None:
    """Stop refreshing ``function`` (its receivers stay connected for the others)."""
    with _lock:
        if function in _functions:
            _functions.remove(function)
        if function in _waiting:
            _waiting.remove(function)
        for deps in _by_model.values():
            deps[:] = [(f, mapping) for f, mapping in deps if f is not function]


def _resolve(function: OnWriteFunction[Any, Any], ref: Any) -> type[models.Model]:
    if isinstance(ref, str):
        try:
            return apps.get_model(ref)
        except (LookupError, ValueError):
            raise ImproperlyConfigured(
                f"@cached_on_write on {function.name}: depends_on names {ref!r}, which is not "
                'an installed model; write "app_label.ModelName" or pass the model class.'
            ) from None
    model: type[models.Model] = ref
    return model


def _register(function: OnWriteFunction[Any, Any]) -> None:
    from django_perfkit.cache import watch_writes

    tables: set[str] = set()
    for ref, mapping in function.depends_on.items():
        model = _resolve(function, ref)
        concrete: Any = model._meta.concrete_model
        tables.update(_own_tables(concrete))
        for through in _throughs(concrete):
            tables.add(through._meta.db_table)
            _connect_m2m(through)
        _by_model.setdefault(concrete, []).append((function, mapping))
        _connect(concrete)
        for candidate in apps.get_models(include_auto_created=True):
            if candidate._meta.concrete_model is concrete:
                _connect(candidate)  # and its proxies
    function.set_tables(frozenset(tables))
    # Writes must be watched in every process that has such a function.
    watch_writes()


def _own_tables(model: Any) -> list[str]:
    return [model._meta.db_table, *(p._meta.db_table for p in model._meta.get_parent_list())]


def _throughs(model: Any) -> list[Any]:
    found = [field.remote_field.through for field in model._meta.many_to_many]
    found.extend(
        rel.through for rel in model._meta.related_objects if rel.many_to_many and rel.through
    )
    return found


def _connect(model: Any) -> None:
    if model in _connected:
        return
    _connected.add(model)
    uid = f"django_perfkit.onwrite.{model._meta.label_lower}"
    signals.pre_save.connect(_pre_save, sender=model, weak=False, dispatch_uid=uid)
    signals.post_save.connect(_post_save, sender=model, weak=False, dispatch_uid=uid)
    signals.post_delete.connect(_post_delete, sender=model, weak=False, dispatch_uid=uid)


def _connect_m2m(through: Any) -> None:
    if ("m2m", through) in _connected:
        return
    _connected.add(("m2m", through))
    uid = f"django_perfkit.onwrite.m2m.{through._meta.label_lower}"
    signals.m2m_changed.connect(_m2m_changed, sender=through, weak=False, dispatch_uid=uid)


# -- mapping instances to entries ---------------------------------------------------


def affected(
    deps: Iterable[tuple[OnWriteFunction[Any, Any], DependencyMapping]], instance: Any
) -> list[Item]:
    """The entries ``instance`` affects, by each function's mapping."""
    items: list[Item] = []
    for function, mapping in deps:
        try:
            result = mapping(instance)
            if result is None:
                continue
            maps: list[Any] = [result] if isinstance(result, Mapping) else list(result)
            for named in maps:
                if not isinstance(named, Mapping) or set(named) != function._param_set:
                    got = sorted(named) if isinstance(named, Mapping) else repr(named)
                    raise TypeError(f"it returned {got}, not the arguments {list(function.params)}")
                args, text = function.key((), named)
                items.append((function, args, text))
        except Exception as exc:
            # Not knowing which entries changed: all of them have.
            logger.error(
                "perfkit: the depends_on mapping of %s for %s failed: %s. Every entry of %s "
                "is invalidated. The mapping must return a dict of %s (a list of such dicts, "
                "or None for no entry).",
                type(instance).__name__,
                function.name,
                exc,
                function.name,
                ", ".join(function.params),
            )
            items.append((function, None, ""))
    return items


def _deps(sender: Any) -> list[tuple[OnWriteFunction[Any, Any], DependencyMapping]]:
    return _by_model.get(sender._meta.concrete_model, [])


# -- receivers ----------------------------------------------------------------------


def _handles(handled: set[Any], table: str) -> bool:
    """May a write to ``table`` be announced by receivers that refresh ``handled``?

    Only if every function that reads the table is among them: the others
    would neither be refreshed nor (announced) invalidated.
    """
    return all(function in handled for function in _functions if table in function.tables)


def _handled(*models_: Any) -> set[Any]:
    return {function for model in models_ for function, _mapping in _deps(model)}


def _pk_keys(using: str, model: Any, pk: Any) -> frozenset[str]:
    if pk is None:
        return frozenset()
    meta = model._meta
    # As the statement's parameters carry it (a UUID is text on SQLite).
    value = meta.pk.get_db_prep_value(pk, connections[using], prepared=False)
    return frozenset({tokens_for(using).value(meta.db_table, str(meta.pk.column), value)})


def _pre_save(
    sender: Any, instance: Any, raw: bool = False, using: str = "default", **_: Any
) -> None:
    if raw:
        return  # loaddata: unannounced, so its writes invalidate instead
    adding = instance._state.adding
    old: list[Item] = []
    if not adding and instance.pk is not None:
        # The row as stored, for the old mapping (a comment moved from A to B).
        # Inside a transaction, locked: a concurrent move waits for this one.
        try:
            rows = sender._base_manager.using(using).filter(pk=instance.pk)
            if connections[using].in_atomic_block:
                rows = rows.select_for_update()
            stored = rows.first()
        except Exception:
            logger.warning("perfkit: cannot read the row being saved; invalidating", exc_info=True)
            return  # not announced: the write invalidates every entry reading the table
        if stored is not None:
            old = affected(_deps(sender), stored)
    handled = _handled(sender)
    try:
        frame = sender_frame()
        pk_keys = _pk_keys(using, sender, instance.pk)
    except Exception:
        return
    kind = "insert" if adding else "update"
    # Multi-table inheritance: the parents' rows share the primary key value.
    for concrete in (sender._meta.concrete_model, *sender._meta.get_parent_list()):
        table = concrete._meta.db_table
        if _handles(handled, table):
            keys = (
                pk_keys
                if concrete is sender._meta.concrete_model
                else _pk_keys(using, concrete, instance.pk)
            )
            announce(Announcement(table, frame, kind, id(instance), keys, old))
            old = []


def _post_save(
    sender: Any, instance: Any, raw: bool = False, using: str = "default", **_: Any
) -> None:
    if raw:
        return
    old: list[Item] = []
    for concrete in (sender._meta.concrete_model, *sender._meta.get_parent_list()):
        found = withdraw(concrete._meta.db_table, id(instance))
        if found is not None and found.payload:
            old = found.payload
    schedule(using, [*old, *affected(_deps(sender), instance)])


def _post_delete(sender: Any, instance: Any, using: str = "default", **_: Any) -> None:
    # Not announced (see versions.announced): the delete also invalidates, so
    # an instance older than its row (moved meanwhile) leaves nothing stale.
    schedule(using, affected(_deps(sender), instance))


def _related_pks(through: Any, instance: Any, model: Any, using: str) -> list[Any]:
    """Primary keys of the ``model`` rows related to ``instance`` through ``through``."""
    mine = type(instance)._meta.concrete_model
    other = model._meta.concrete_model
    fks = [f for f in through._meta.concrete_fields if f.is_relation and f.many_to_one]
    sources = [f for f in fks if f.related_model._meta.concrete_model is mine]
    targets = [f for f in fks if f.related_model._meta.concrete_model is other]
    condition = Q()
    for field in sources:
        condition |= Q(**{field.attname: instance.pk})
    found: set[Any] = set()
    rows = through._base_manager.using(using).filter(condition)
    for row in rows.values_list(*(f.attname for f in targets)):
        found.update(row)
    found.discard(None)
    return list(found)


def _everything(*models_: Any) -> list[Item]:
    """Every entry of the functions depending on ``models_`` (what cannot be mapped)."""
    return [(function, None, "") for function in _handled(*models_)]


def _m2m_changed(
    sender: Any,
    instance: Any,
    action: str,
    model: Any,
    pk_set: set[Any] | None,
    using: str = "default",
    **_: Any,
) -> None:
    table = sender._meta.db_table
    if action.startswith("pre_"):
        if not _handles(_handled(type(instance), model), table):
            return  # a function reads the through table itself: let the write invalidate
        payload: Any = None
        if action == "pre_clear" and _deps(model):
            try:
                payload = _related_pks(sender, instance, model, using)
            except Exception:
                logger.warning("perfkit: cannot read the rows being cleared", exc_info=True)
                return  # not announced: the clear invalidates instead
        try:
            frame = sender_frame()
        except Exception:
            return
        announce(Announcement(table, frame, "m2m", id(instance), payload=payload))
        return
    found = withdraw(table, id(instance))
    items = affected(_deps(type(instance)), instance)
    others = _deps(model)
    if others:
        pks = found.payload if action == "post_clear" and found is not None else pk_set
        try:
            if pks is None:
                items.extend(_everything(model))
            elif pks:
                for obj in model._base_manager.using(using).filter(pk__in=pks):
                    items.extend(affected(others, obj))
        except Exception:
            logger.warning("perfkit: cannot read the related rows; invalidating", exc_info=True)
            items.extend(_everything(model))
    schedule(using, items)


# -- refreshing at commit -----------------------------------------------------------


class Refresh(CommitHook):
    """The entries a transaction's signalled writes affect, refreshed once it commits."""

    __slots__ = ("items",)
    rank = 1  # after the version bumps of the same transaction

    def __init__(self, sids: tuple[str, ...]) -> None:
        super().__init__(sids)
        self.items: dict[tuple[int, str], Item] = {}

    def __call__(self) -> None:
        refresh(list(self.items.values()))


def schedule(using: str, items: list[Item]) -> None:
    """Refresh ``items`` when the write on ``using`` commits (now, outside a transaction)."""
    if not items:
        return
    connection = connections[using]
    if not connection.in_atomic_block:
        refresh(items)
        return
    hook = commit_hook(connection, Refresh)
    for item in items:
        hook.items.setdefault((id(item[0]), item[2]), item)


def refresh(items: list[Item]) -> None:
    """Bump the items' own tokens (one round trip per alias), then recompute them.

    Only the entries that are stored are recomputed: a write does not compute a
    value nobody has read (the first read does, once, and the writes keep it
    fresh from then on). Never raises: the write these follow has committed.
    """
    try:
        _refresh(items)
    except Exception:
        logger.exception("perfkit: refreshing on-write entries failed")


def _refresh(items: list[Item]) -> None:
    from django_perfkit.cache.onwrite import deferred

    unique: dict[tuple[int, str], Item] = {}
    for item in items:
        unique.setdefault((id(item[0]), item[2]), item)
    by_alias: dict[str, list[str]] = {}
    for function, named, text in unique.values():
        tokens = tokens_for(function.using)
        key = tokens.key("a", function.name) if named is None else function.own_token(text)
        by_alias.setdefault(function.using, []).append(key)
    reached = {alias: bump(alias, keys) for alias, keys in by_alias.items()}
    candidates = [
        (function, named, text)
        for function, named, text in unique.values()
        if named is not None and reached[function.using]
    ]  # a failed bump is remembered: the alias is not read until it is made good
    for function, named, text in _stored(candidates):
        # Each on its own: one failing must not cost the others their refresh.
        with contextlib.suppress(Exception):  # recompute() logs; the entry is deleted
            if function.defer:
                deferred.worker.enqueue(function, named, text)
            else:
                function.recompute(named, text)


def _stored(items: list[tuple[Any, dict[str, Any], str]]) -> list[tuple[Any, dict[str, Any], str]]:
    by_alias: dict[str, list[tuple[Any, dict[str, Any], str]]] = {}
    for item in items:
        by_alias.setdefault(item[0].using, []).append(item)
    gateway = get_gateway()
    kept: list[tuple[Any, dict[str, Any], str]] = []
    for alias, group in by_alias.items():
        tokens = tokens_for(alias)
        entries = [function.entry_key(tokens, text) for function, _named, text in group]
        present = gateway.run_script(PRESENT, entries, [], None)
        if isinstance(present, list):
            kept.extend(item for item, there in zip(group, present, strict=True) if there)
    return kept
