"""N+1 detection: what each query did in the ORM, and which ones repeat.

A :class:`Guard` lives on a request record (``record.guard``) while the query
guard is on for that record: a request under ``PerfkitMiddleware`` (unless
``QUERY_GUARD["MODE"]`` is ``"off"``), a :func:`~django_perfkit.queries.capture`
block, a :func:`~django_perfkit.queries.query_budget`. The query collector
hands it each ``SELECT`` (:meth:`Guard.observe`); when the scope closes,
:meth:`Guard.close` groups them into findings.

How a query is explained, without patching a single descriptor: the
collector runs inside the ORM call that made the query, so the Python stack
at that moment says what it was. Walking it from the query up to the first
frame of project code, perfkit looks for the frames of a known set of
Django functions (by code object, a dict lookup per frame):

* a lazy load: ``ForwardManyToOneDescriptor.__get__`` (forward foreign keys
  and one-to-ones), ``ReverseOneToOneDescriptor.__get__``,
  ``DeferredAttribute.__get__`` (deferred fields), ``GenericForeignKey.__get__``;
  their ``self`` and ``instance`` name the relation and the instance;
* a queryset operation: ``_fetch_all`` (iteration, ``list()``, slicing,
  ``values_list()``), ``get``, ``count``, ``exists``, ``aggregate``,
  ``first``, ``last``, ``in_bulk``, ``refresh_from_db`` and
  ``prefetch_related_objects``; the outermost one is what the project asked
  for. A related manager's queryset carries its instance in ``_hints`` (Django
  puts it there for database routers), which names ``author.books`` and
  ``book.tags`` too.

This works the same on every Django version perfkit supports: Django 6.1's
fetch modes only apply to querysets created with one (there is no global
default to set), and they do not cover related managers, so they could not
replace it. Under ``FETCH_PEERS`` a would-be N+1 runs one query and is
correctly not reported.

What the stack cannot tell is where an instance came from. For that,
``QuerySet.__init__``, ``_clone``, ``_fetch_all`` and
``_prefetch_related_objects`` are wrapped while at least one guard is open
anywhere in the process (a reference count; unwrapped when the last one
closes, except once the middleware has guarded a request: then they stay, as
it will guard the next one; with ``MODE`` ``"off"`` Django runs untouched):
each queryset notes the line of project code that built it, and each
multi-row result notes its instances (and the ones ``select_related``
attached to them). That gives a finding its *origin* (the line to change),
tells a loop over a queryset from a single ``get()``, and gives the path of
a second hop (``select_related("author__publisher")``). ``prefetch_related``
results are wrapped to notice the ones never read.
"""

from __future__ import annotations

import sys
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from django_perfkit.collectors.db import _library_file, _line, _params_hash, find_site
from django_perfkit.queries.fingerprint import fingerprint
from django_perfkit.record import _current, _short_path

if TYPE_CHECKING:
    from django_perfkit.record import RequestRecord

__all__ = ["Guard", "NPlusOne", "UnusedPrefetch"]

#: Instances tracked per scope, at most (a test that loads a million rows
#: still gets findings for what it loaded first).
MAX_TRACKED = 100_000
#: Queries explained per scope, at most (memory stays bounded in a request
#: that runs a million; the first ten thousand show any loop in it).
MAX_EVENTS = 10_000
#: Frames of project code kept in a query's stack signature, from the first
#: one up: enough to tell one helper called from two lines (two places) from
#: a loop (one place), across library frames in between (call_command, a
#: template's render). Each frame walked costs about half a microsecond, so
#: the walk stops after MAX_WALK frames past the first of project code.
SIGNATURE_DEPTH = 4
MAX_WALK = 40


@dataclass(slots=True)
class NPlusOne:
    """One N+1 finding: the same lazy load or query shape, repeated from one place."""

    #: ``"app_label.Model"`` whose relation was loaded, or the queried model
    #: when only the SQL is known; ``None`` for raw SQL.
    model: str | None
    #: The relation or field (``"author"``, ``"tags"``, ``"title"``), when known.
    field: str | None
    #: The query's shape (:func:`~django_perfkit.queries.fingerprint`).
    fingerprint: str
    count: int
    time_ms: float
    #: Where the loop's body made the query: ``news/views.py:42 in article_list``.
    location: str | None
    #: Where the queryset the instances came from was built (``file:line in func``).
    origin: str | None
    #: What to write instead.
    suggestion: str
    #: ``"relation"`` (an ORM lazy load) or ``"query"`` (the same SQL shape).
    kind: str = "query"
    #: Set once a budget or the middleware acted on it (so an outer scope does not again).
    handled: bool = False

    @property
    def relation(self) -> str | None:
        """``"app_label.Model.field"``, when the relation is known."""
        if self.model is None or self.field is None:
            return None
        return f"{self.model}.{self.field}"

    def __str__(self) -> str:
        what = self.relation or self.fingerprint
        text = f"N+1: {what} x{self.count} ({self.time_ms:.1f} ms)"
        if self.location:
            text += f" at {self.location}"
        if self.origin:
            text += f"; queryset built at {self.origin}"
        if self.relation:
            text += f"\n    SQL: {self.fingerprint}"
        return text + f"\n    fix: {self.suggestion}"


@dataclass(slots=True)
class UnusedPrefetch:
    """A ``prefetch_related()`` lookup whose results nothing read."""

    model: str
    lookup: str
    origin: str | None
    handled: bool = False

    def __str__(self) -> str:
        where = f" (queryset built at {self.origin})" if self.origin else ""
        return (
            f"unused prefetch: {self.model} prefetch_related({self.lookup!r}){where} "
            "was never read; remove it"
        )


# --- what the stack says -------------------------------------------------------

_LAZY_FK = "fk"
_LAZY_O2O = "o2o"
_LAZY_DEFERRED = "deferred"
_LAZY_GFK = "gfk"
_REFRESH = "refresh"
_WRITE = "write"
#: Related-manager methods that write (their reads check what exists).
_MANAGER_WRITES = frozenset(
    {"add", "remove", "clear", "set", "create", "get_or_create", "update_or_create"}
    | {"_add_items", "_remove_items", "_clear", "_remove_prefetched_objects"}
)
_PREFETCH_OBJECTS = "prefetch_related_objects"

#: id(code object) -> what its frame means ("fk", "count", ...); built on first
#: use. Keyed by id: hashing a code object hashes its bytecode, every time.
#: (The code objects live as long as their functions, which is for good.)
_known: dict[int, str] | None = None


def _label(model: Any) -> str:
    meta = model._meta
    return f"{meta.app_label}.{meta.object_name}"


def _known_frames() -> dict[int, str]:
    global _known
    if _known is None:
        from django.db.models import Model, QuerySet, query
        from django.db.models.fields import related_descriptors as rd
        from django.db.models.query_utils import DeferredAttribute

        known: dict[Any, str] = {
            rd.ForwardManyToOneDescriptor.__get__.__code__: _LAZY_FK,
            rd.ReverseOneToOneDescriptor.__get__.__code__: _LAZY_O2O,
            DeferredAttribute.__get__.__code__: _LAZY_DEFERRED,
            Model.refresh_from_db.__code__: _REFRESH,
            query.prefetch_related_objects.__code__: _PREFETCH_OBJECTS,
        }
        for name in ("get", "count", "exists", "aggregate", "first", "last", "in_bulk"):
            known[getattr(QuerySet, name).__code__] = name
        # A read made by a write (the SELECT in save() of an existing row, in
        # m2m add(), in a cascade delete) is the write's: not an N+1 read.
        writes = [Model.save_base, Model.delete]
        writes += [
            getattr(QuerySet, name)
            for name in ("update", "delete", "bulk_create", "bulk_update")
            + ("get_or_create", "update_or_create")
        ]
        for function in writes:
            known[function.__code__] = _WRITE
        for factory in (
            rd.create_forward_many_to_many_manager,
            rd.create_reverse_many_to_one_manager,
        ):
            for code in _nested_code(factory.__code__):
                if code.co_name in _MANAGER_WRITES:
                    known[code] = _WRITE
        known[_original["_fetch_all"].__code__] = "fetch"
        try:
            from django.contrib.contenttypes import fields as generic
        except Exception:  # contenttypes not installed
            pass
        else:
            # Django 6.1 moved the accessor to GenericForeignKeyDescriptor.
            holder = getattr(generic, "GenericForeignKeyDescriptor", generic.GenericForeignKey)
            getter = getattr(holder, "__get__", None)
            if getter is not None and hasattr(getter, "__code__"):
                known[getter.__code__] = _LAZY_GFK
        _known = {id(code): kind for code, kind in known.items()}
    return _known


def _nested_code(code: Any) -> list[Any]:
    """Code objects defined inside ``code`` (the methods of a class a factory builds)."""
    found = []
    for const in code.co_consts:
        if hasattr(const, "co_consts"):
            found.append(const)
            found += _nested_code(const)
    return found


class Origin(NamedTuple):
    """Where a queryset's instances came from."""

    model: str
    site: tuple[str, int, str] | None
    rows: int

    @property
    def where(self) -> str | None:
        return _site_text(self.site)


def _site_text(site: tuple[str, int, str] | None) -> str | None:
    return None if site is None else f"{_short_path(site[0])}:{site[1]} in {site[2]}"


class Loaded(NamedTuple):
    origin: Origin
    #: ``select_related`` path from the origin's model to this instance ("" for its own rows).
    path: str


class Relation(NamedTuple):
    kind: str  # "fk", "o2o", "deferred", "gfk", "many"
    model: str  # the model the attribute is on
    field: str  # attribute name (or accessor names joined with " or ")


class Event(NamedTuple):
    """One ``SELECT`` the guard saw."""

    sql: str
    duration: float
    location: tuple[str, int, str] | None
    signature: tuple[Any, ...]
    op: str | None
    relation: Relation | None
    loaded: Loaded | None  # where the instance whose relation was loaded came from
    #: For a query with no relation: the origin one of its parameters is a primary key of.
    param_origin: Origin | None
    queried: str | None  # label of the queryset's model
    lookups: tuple[str, ...]  # prefetch_related_objects lookups
    #: Hash of the parameters: a loop asks for other rows each time; the same
    #: query with the same values again is a duplicate, not an N+1.
    params_hash: int
    #: id() of the instance whose relation was loaded (relation events only).
    owner: int | None


def _many_relation(owner: Any, queryset: Any) -> Relation | None:
    """The related manager (``author.books``, ``book.tags``) a queryset came from."""
    from django.db.models import ForeignKey

    known = getattr(queryset, "_known_related_objects", None)
    for field in known or ():
        # Reverse foreign key: Django names the field. (Django 6.1 fills this for
        # many-to-many managers too, with other keys: those take the path below.)
        if isinstance(field, ForeignKey):
            return Relation("many", _label(type(owner)), field.remote_field.get_accessor_name())
    target = queryset.model
    names = [
        f.get_accessor_name() if f.auto_created and not f.concrete else f.name
        for f in type(owner)._meta.get_fields()
        if (f.many_to_many or f.one_to_many) and f.related_model is target
    ]
    if not names:
        return None
    return Relation("many", _label(type(owner)), " or ".join(sorted(names)))


class Guard:
    """The N+1 state of one scope (a request, a ``capture()`` block)."""

    __slots__ = (
        "threshold",
        "events",
        "loaded",
        "pk_origins",
        "keep",
        "prefetches",
        "tracked",
        "_installed",
    )

    def __init__(self, threshold: int = 2) -> None:
        self.threshold = max(2, threshold)
        self.events: list[Event] = []
        #: id(instance) -> where it came from (the instances are kept alive in ``keep``).
        self.loaded: dict[int, Loaded] = {}
        #: primary key value -> the latest multi-row origin holding an instance with it.
        self.pk_origins: dict[Any, Origin] = {}
        self.keep: list[Any] = []
        self.prefetches: list[_Prefetch] = []
        self.tracked = 0
        self._installed = False

    # -- lifecycle

    def open(self, *, keep_installed: bool = False) -> Guard:
        """Start watching (wraps QuerySet if no other guard has).

        ``keep_installed``: leave the wrappers in place after the last guard
        closes (the middleware, which opens one per request).
        """
        if keep_installed and _keep and _wrapped():
            # The middleware's case once it has run: wrapped for good, so no
            # reference to count and no lock to take on every request.
            return self
        _install(keep_installed)
        self._installed = True
        return self

    def close(self, record: RequestRecord) -> None:
        """Turn what this scope saw into findings on ``record`` (once)."""
        if self._installed:
            self._installed = False
            _uninstall()
        if not self.events and not self.prefetches:
            self.keep.clear()
            self.loaded.clear()
            self.pk_origins.clear()
            return  # nothing ran: nothing to find (the common case of a cached page)
        try:
            record.nplusone.extend(self.findings())
            record.unused_prefetches.extend(
                UnusedPrefetch(p.model, p.lookup, p.origin) for p in self.prefetches if not p.used
            )
        finally:
            self.keep.clear()
            self.loaded.clear()
            self.pk_origins.clear()

    # -- instances (from the wrapped QuerySet methods)

    def track(self, queryset: Any, rows: list[Any]) -> None:
        from django.db.models import Model

        if not rows or not isinstance(rows[0], Model) or self.tracked >= MAX_TRACKED:
            return
        # Bounded however large one result is (an export of a million rows).
        rows = rows[: MAX_TRACKED - self.tracked]
        origin = Origin(_label(queryset.model), queryset.__dict__.get("_perfkit_site"), len(rows))
        self.keep.append(rows)
        self.tracked += len(rows)
        loaded = self.loaded
        own = Loaded(origin, "")
        multi = len(rows) > 1
        for obj in rows:
            loaded[id(obj)] = own
            if multi:
                self.pk_origins[obj.pk] = origin
            cache = obj._state.__dict__.get("fields_cache")
            if cache:
                self._track_related(cache, origin, "", 0)

    def _track_related(self, cache: dict[str, Any], origin: Origin, path: str, depth: int) -> None:
        # select_related() put these in the fields cache: a lazy load on one
        # of them is the next hop of the same queryset.
        from django.db.models import Model

        for name, value in cache.items():
            if not isinstance(value, Model) or id(value) in self.loaded:
                continue
            here = f"{path}__{name}" if path else name
            self.loaded[id(value)] = Loaded(origin, here)
            self.keep.append(value)
            inner = value._state.__dict__.get("fields_cache")
            if inner and depth < 4:
                self._track_related(inner, origin, here, depth + 1)

    def track_prefetch(self, queryset: Any) -> None:
        rows = queryset._result_cache
        if not rows:
            return
        origin = _site_text(queryset.__dict__.get("_perfkit_site"))
        model = _label(queryset.model)
        for lookup in queryset._prefetch_related_lookups:
            if getattr(lookup, "to_attr", None):
                continue  # a list attribute: reads of it cannot be seen
            name = getattr(lookup, "prefetch_to", lookup).split("__", 1)[0]
            entry = _Prefetch(model, name, origin)
            watched = False
            for obj in rows:
                watched = _watch(obj, name, entry) or watched
            if watched:
                self.prefetches.append(entry)

    # -- queries (from the collector)

    def observe(self, sql: str, params: Any, duration: float) -> tuple[str, int, str] | None:
        """Explain one query from the stack it runs on (called by the collector).

        Returns the call site it found on the way (the collector's
        ``QueryRecord.site``), or ``None`` when it did not walk the stack.
        """
        head = sql.lstrip()[:6].upper()
        if head != "SELECT" and not head.startswith("WITH"):
            return None  # writes in a loop are bulk_create's business, not an N+1 read
        if len(self.events) >= MAX_EVENTS:
            return None
        known = _known_frames()
        # Frame 0 is this method, 1 the collector, 2 what called the collector:
        # Django's _execute_with_wrappers, or an execute wrapper outside
        # perfkit's; neither is the line that asked for the query.
        frame: Any = sys._getframe(3)
        op: str | None = None
        queryset: Any = None
        relation: Relation | None = None
        owner: Any = None
        lookups: tuple[str, ...] = ()
        location: tuple[str, int, str] | None = None
        signature: list[Any] = []
        walked = 0
        library = _library_file
        while frame is not None:
            code = frame.f_code
            if location is None:
                kind = known.get(id(code))
                if kind is not None:
                    if kind == _WRITE:
                        return None
                    f_locals = frame.f_locals
                    if kind == _LAZY_FK:
                        field = f_locals["self"].field
                        relation = Relation(kind, _label(field.model), field.name)
                        owner = f_locals.get("instance")
                    elif kind == _LAZY_O2O:
                        related = f_locals["self"].related
                        relation = Relation(
                            kind, _label(related.model), related.get_accessor_name()
                        )
                        owner = f_locals.get("instance")
                    elif kind == _LAZY_DEFERRED:
                        field = f_locals["self"].field
                        relation = Relation(kind, _label(field.model), field.attname)
                        owner = f_locals.get("instance")
                    elif kind == _LAZY_GFK:
                        gfk = f_locals["self"]
                        gfk = getattr(gfk, "field", gfk)  # 6.1: the descriptor's field
                        relation = Relation(kind, _label(gfk.model), gfk.name)
                        owner = f_locals.get("instance")
                    elif kind == _PREFETCH_OBJECTS:
                        op = kind
                        queryset = None  # the prefetch's own queryset is not what the user called
                        lookups = tuple(
                            str(getattr(item, "prefetch_to", item))
                            for item in f_locals.get("related_lookups", ())
                        )
                    else:
                        op = kind
                        queryset = None if kind == _REFRESH else f_locals.get("self")
                else:
                    filename = code.co_filename
                    if not library[filename]:
                        location = (filename, _line(frame, code), code.co_name)
            if location is not None:
                walked += 1
                if not library[code.co_filename]:
                    # The instruction offset names the call as well as the line
                    # does, without decoding the line table (f_lineno does).
                    signature.append(id(code))
                    signature.append(frame.f_lasti)
                    if len(signature) >= 2 * SIGNATURE_DEPTH:
                        break
                if walked >= MAX_WALK:
                    break
            frame = frame.f_back
        if relation is None and queryset is not None and op != _REFRESH:
            hints = getattr(queryset, "_hints", None)
            owner = hints.get("instance") if hints else None
            if owner is not None and type(owner) is not queryset.model:
                relation = _many_relation(owner, queryset)
            else:
                owner = None
        loaded = self.loaded.get(id(owner)) if owner is not None else None
        param_origin = None
        if relation is None and params:
            param_origin = self._origin_of(params)
        queried = _label(queryset.model) if queryset is not None else None
        self.events.append(
            Event(
                sql,
                duration,
                location,
                tuple(signature),
                op,
                relation,
                loaded,
                param_origin,
                queried,
                lookups,
                _params_hash(params),
                None if owner is None else id(owner),
            )
        )
        return location

    def _origin_of(self, params: Any) -> Origin | None:
        if not self.pk_origins:
            return None
        values = params.values() if isinstance(params, dict) else params
        try:
            for value in values:
                try:
                    origin = self.pk_origins.get(value)
                except TypeError:  # unhashable parameter
                    continue
                if origin is not None:
                    return origin
        except TypeError:
            return None
        return None

    # -- findings

    def findings(self) -> list[NPlusOne]:
        groups: dict[tuple[Any, ...], list[Event]] = defaultdict(list)
        for event in self.events:
            shape = fingerprint(event.sql)
            if event.relation is not None:
                if event.loaded is not None and event.loaded.origin.rows < 2:
                    continue  # the instance came from get()/first(): not a loop over a queryset
                key: tuple[Any, ...] = ("relation", event.relation, shape, event.signature)
            else:
                key = ("query", shape, event.signature)
            groups[key].append(event)
        found = []
        for key, events in groups.items():
            if len(events) < self.threshold:
                continue
            # A loop loads the relation of several instances, or asks for other
            # rows each time. The same query with the same values from one place
            # (the admin's changelist counts twice) is a duplicate, not an N+1.
            if key[0] == "relation":
                distinct = len({event.owner for event in events})
            else:
                distinct = len({event.params_hash for event in events})
            if distinct < 2:
                continue
            found.append(_finding(key[0], events, fingerprint(events[0].sql)))
        return found


def _finding(kind: str, events: list[Event], shape: str) -> NPlusOne:
    first = events[0]
    location = _site_text(first.location)
    time_ms = sum(e.duration for e in events) * 1000
    relation = first.relation
    if relation is not None:
        loaded = first.loaded
        origin = loaded.origin.where if loaded else None
        path = loaded.path if loaded else ""
        return NPlusOne(
            model=relation.model,
            field=relation.field,
            fingerprint=shape,
            count=len(events),
            time_ms=time_ms,
            location=location,
            origin=origin,
            suggestion=_relation_fix(relation, first.op, path, first.loaded),
            kind="relation",
        )
    param_origin = first.param_origin
    return NPlusOne(
        model=first.queried,
        field=None,
        fingerprint=shape,
        count=len(events),
        time_ms=time_ms,
        location=location,
        origin=param_origin.where if param_origin else None,
        suggestion=_query_fix(first),
        kind="query",
    )


def _on(loaded: Loaded | None) -> str:
    if loaded is None:
        return "on the queryset the instances come from"
    where = f" (built at {loaded.origin.where})" if loaded.origin.site else ""
    return f"on the {loaded.origin.model} queryset{where}"


def _relation_fix(relation: Relation, op: str | None, path: str, loaded: Loaded | None) -> str:
    name = f"{path}__{relation.field}" if path else relation.field
    on = _on(loaded)
    if relation.kind in (_LAZY_FK, _LAZY_O2O):
        return f'select_related("{name}") {on}'
    if relation.kind == _LAZY_DEFERRED:
        return (
            f'"{relation.field}" is deferred: take it out of defer()/only() {on}, '
            "or add it to only()"
        )
    if relation.kind == _LAZY_GFK:
        return f'prefetch_related("{name}") {on}'
    # A related manager (reverse foreign key or many-to-many).
    first_name = relation.field.split(" or ")[0]
    if " or " in relation.field:
        name = f"{path}__{first_name}" if path else first_name
    if op == "count":
        return f'annotate({first_name}_count=Count("{name}")) {on}, and read the attribute'
    if op == "exists":
        return (
            f'annotate({first_name}_count=Count("{name}")) {on}, and test it for > 0 '
            f'(or prefetch_related("{name}") if the rows are read too)'
        )
    if op == "aggregate":
        return f'annotate() the aggregate through "{name}" {on} instead of aggregate() per row'
    if op in ("first", "last"):
        return (
            f'prefetch_related("{name}") {on} and take the row in Python '
            f'(Prefetch("{name}", queryset=..., to_attr=...) to order or filter)'
        )
    return f'prefetch_related("{name}") {on}'


def _query_fix(event: Event) -> str:
    op = event.op
    origin = event.param_origin
    accessor = _accessor(origin, event.queried, event.sql) if origin is not None else None
    on = (
        f" on the {origin.model} queryset (built at {origin.where})"
        if origin and origin.site
        else ""
    )
    if op == "get":
        return (
            "fetch them all at once before the loop: "
            f"{event.queried or 'Model'}.objects.in_bulk(ids) (or filter(pk__in=ids))"
        )
    if op == _PREFETCH_OBJECTS:
        lookups = ", ".join(f'"{item}"' for item in event.lookups) or "..."
        return (
            f"call prefetch_related_objects(all_instances, {lookups}) once, before the loop, "
            "instead of once per instance"
        )
    if op in ("count", "exists", "aggregate"):
        if accessor:
            return f'annotate({accessor}_count=Count("{accessor}")){on} instead of {op}() per row'
        return f"annotate() the {op} on the parent queryset{on} instead of {op}() per row"
    if op is None:
        return (
            "run one query for all the rows before the loop (WHERE ... IN (...) or "
            "= ANY(%s)) and group the results in Python"
        )
    if accessor:
        return f'prefetch_related("{accessor}"){on}'
    return (
        "query once before the loop with filter(<field>__in=...) and group the rows in "
        "Python (or prefetch_related() the relation on the parent queryset)"
    )


def _accessor(origin: Origin, queried: str | None, sql: str) -> str | None:
    """The relation from ``origin``'s model to ``queried`` that ``sql`` filters on."""
    if queried is None:
        return None
    from django.apps import apps

    try:
        model = apps.get_model(origin.model)
        target = apps.get_model(queried)
    except LookupError:
        return None
    candidates = [
        f
        for f in model._meta.get_fields()
        if (f.one_to_many or f.many_to_many) and f.related_model is target
    ]
    if len(candidates) > 1:
        # Two relations to one model (Book.writer and Book.editor): the one
        # whose column the query's WHERE names.
        where = sql[sql.upper().rfind(" WHERE ") :]
        candidates = [
            f
            for f in candidates
            if not f.one_to_many or f'"{f.field.column}"' in where or f" {f.field.column} " in where
        ]
    if len(candidates) != 1:
        return None
    found = candidates[0]
    reverse = found.auto_created and not found.concrete
    return str(found.get_accessor_name() if reverse else found.name)


# --- prefetch use -------------------------------------------------------------


class _Prefetch:
    __slots__ = ("model", "lookup", "origin", "used")

    def __init__(self, model: str, lookup: str, origin: str | None) -> None:
        self.model = model
        self.lookup = lookup
        self.origin = origin
        self.used = False


class WatchedCache(dict[str, Any]):
    """A prefetch cache that notices when an entry is read.

    Pickles (and copies) as a plain dict, so a cached instance carries no trace of it.
    """

    __slots__ = ("watch",)

    watch: dict[str, _Prefetch]

    def __getitem__(self, key: str) -> Any:
        entry = self.watch.get(key)
        if entry is not None:
            entry.used = True
        return dict.__getitem__(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        entry = self.watch.get(key)
        if entry is not None:
            entry.used = True
        return dict.get(self, key, default)

    def __reduce__(self) -> Any:
        return (dict, (dict(self),))

    def copy(self) -> dict[str, Any]:
        return dict(self)


def _watch(obj: Any, name: str, entry: _Prefetch) -> bool:
    holders: list[tuple[Any, str]] = []
    prefetched = obj.__dict__.get("_prefetched_objects_cache")
    if prefetched is not None and name in prefetched:
        holders.append((obj, "_prefetched_objects_cache"))
    fields = obj._state.__dict__.get("fields_cache")
    if fields is not None and name in fields:
        holders.append((obj._state, "fields_cache"))
    for holder, attr in holders:
        cache = holder.__dict__[attr]
        if not isinstance(cache, WatchedCache):
            watched = WatchedCache(cache)
            watched.watch = {}
            holder.__dict__[attr] = cache = watched
        cache.watch[name] = entry
    return bool(holders)


# --- the wrapped QuerySet methods (only while a guard is open) -----------------

_lock = threading.Lock()
_open = 0
#: Set once the middleware has opened a guard: stay installed from then on.
_keep = False
_original: dict[str, Callable[..., Any]] = {}


def _guard() -> Guard | None:
    record = _current.get()
    return record.guard if record is not None else None


def _install(keep: bool = False) -> None:
    global _open, _keep
    with _lock:
        _open += 1
        _keep = _keep or keep
        if _wrapped():
            return
        from django.db.models import QuerySet

        clone = _original.setdefault("_clone", QuerySet._clone)  # type: ignore[attr-defined]
        init = _original.setdefault("__init__", QuerySet.__init__)
        fetch_all = _original.setdefault("_fetch_all", QuerySet._fetch_all)
        prefetch = _original.setdefault(
            "_prefetch_related_objects",
            QuerySet._prefetch_related_objects,  # type: ignore[attr-defined]
        )

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **kwargs)
            # A new chain (a manager's get_queryset(): no query passed in; a
            # clone passes its query and is handled in _clone). Manager.all()
            # returns it as it is, so this is where Model.objects.all() is built.
            if len(args) < 2 and kwargs.get("query") is None and _guard() is not None:
                self.__dict__["_perfkit_site"] = find_site(2)

        def _clone(self: Any, *args: Any, **kwargs: Any) -> Any:
            copy = clone(self, *args, **kwargs)
            if _guard() is not None:
                # Where the chain was built: the project line that made this
                # clone (the view's .filter().select_related(), not a custom
                # queryset method it calls). Raw frame facts, formatted only
                # if a finding names them; a short walk (the ORM's frames).
                copy.__dict__["_perfkit_site"] = find_site(2)
            return copy

        def _fetch_all(self: Any) -> None:
            fresh = self._result_cache is None
            fetch_all(self)
            if fresh:
                guard = _guard()
                if guard is not None and type(self._result_cache) is list:
                    if "_perfkit_site" not in self.__dict__:  # never cloned: where it ran
                        self.__dict__["_perfkit_site"] = find_site(2)
                    guard.track(self, self._result_cache)

        def _prefetch_related_objects(self: Any) -> None:
            prefetch(self)
            guard = _guard()
            if guard is not None:
                guard.track_prefetch(self)

        QuerySet._clone = _clone  # type: ignore[attr-defined]
        QuerySet.__init__ = __init__  # type: ignore[method-assign]
        QuerySet._fetch_all = _fetch_all  # type: ignore[method-assign]
        QuerySet._prefetch_related_objects = _prefetch_related_objects  # type: ignore[attr-defined]


def _uninstall(force: bool = False) -> None:
    global _open, _keep
    with _lock:
        _open = max(0, _open - (0 if force else 1))
        if force:
            _keep = False
        if _open > 0 or _keep:
            return
        from django.db.models import QuerySet

        for name, original in _original.items():
            setattr(QuerySet, name, original)


def _wrapped() -> bool:
    """Whether perfkit's QuerySet wrappers are in place."""
    from django.db.models import QuerySet

    original = _original.get("_fetch_all")
    return original is not None and QuerySet._fetch_all is not original


def installed() -> bool:
    """Whether perfkit's QuerySet wrappers are in place (a guard is open, or the
    middleware has run one)."""
    return _wrapped()


def uninstall() -> None:
    """Take the wrappers off now if no guard is open (tests; a process turning the guard off)."""
    _uninstall(force=True)
