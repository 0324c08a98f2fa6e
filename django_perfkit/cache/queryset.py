"""``.cache()`` on querysets: the mixin, a ready-made queryset class and manager.

What is cached is the result of whatever evaluates the queryset: iteration,
``list()``, ``len()``, ``get()``, ``first()``, ``last()``, ``in_bulk()``,
slicing, ``values()``/``values_list()`` (all through ``_fetch_all``, with
``select_related`` and ``prefetch_related`` results included), ``count()``,
``exists()`` and ``aggregate()``; and their async forms, which talk to Redis
through ``redis.asyncio`` and only hop to a thread to run the query on a miss.

Not cached, by design: ``iterator()`` (it streams), querysets marked for
writing (``select_for_update()``, the read inside ``get_or_create`` /
``update_or_create``), reads of tables that the open transaction has written,
and queries that cannot return rows (``filter(pk__in=[])``).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.core.exceptions import EmptyResultSet, SynchronousOnlyOperation
from django.db import connections, models
from django.db.models.query import MAX_GET_RESULTS
from django.utils import timezone

from django_perfkit.cache import analysis, entries
from django_perfkit.conf import get_settings
from django_perfkit.versions.tokens import (
    aready_for_reads,
    pending_epochs,
    ready_for_reads,
    tokens_for,
)
from django_perfkit.versions.writes import dirty_tables

__all__ = ["CachedManager", "CachedQuerySet", "CachedQuerySetMixin"]

M = TypeVar("M", bound=models.Model)

_OFF = "off"


class _Options:
    __slots__ = ("timeout", "key")

    def __init__(self, timeout: float | None, key: str | None) -> None:
        self.timeout = timeout
        self.key = key


if TYPE_CHECKING:
    _Base = models.QuerySet[Any]
else:
    _Base = object


class CachedQuerySetMixin(_Base):
    """Adds ``.cache()`` and ``.nocache()`` to a ``QuerySet`` subclass.

    ``class ArticleQuerySet(CachedQuerySetMixin, models.QuerySet): ...``
    """

    _perfkit_cache: _Options | str | None = None
    #: True only on the queryset ``CachedManager.cache()`` just made: its query is
    #: the model's unfiltered default, so its entries are named by the model,
    #: the queryset class and the call (``get(pk=42)``), without building or
    #: pickling a query. Any chained method returns a clone, which is False.
    _perfkit_pristine: bool = False
    #: Steps (filter, exclude, select_related, order_by, a slice) recorded but
    #: not yet applied to the query, on a queryset named without its query (an
    #: explicit key, or the manager's own): a hit never builds them. ``None``:
    #: steps are applied at once, as Django does. Applied on first access to
    #: ``.query`` (see :meth:`_perfkit_apply_steps`).
    _perfkit_steps: tuple[tuple[str, tuple[Any, ...], dict[str, Any]], ...] | None = None
    #: What the recorded steps add to the entry's name.
    _perfkit_steps_name: str = ""
    #: The query the steps are recorded on, never changed: building the steps
    #: again (two threads sharing a queryset at class level) gives the same query.
    _perfkit_base: Any = None
    _perfkit_sliced: bool = False

    # -- the public API ---------------------------------------------------------

    def cache(self, timeout: float | None = None, key: str | None = None) -> Any:
        """Serve this queryset's results from Redis.

        ``timeout``: seconds an entry lives (default: the model's entry in
        ``PERFKIT["CACHE"]["MODELS"]``, else ``DEFAULT_TIMEOUT``). ``key``: name
        the entry yourself instead of hashing the SQL (saves compiling the query
        on a hit; the name must identify the query, parameters included).
        """
        options = self._perfkit_options(timeout, key)
        clone = _private(self)._chain()
        clone._perfkit_cache = options
        if key is not None:
            clone._perfkit_steps = ()
        return clone

    def _perfkit_options(self, timeout: float | None, key: str | None) -> _Options:
        """``.cache()``'s arguments, checked (``ValueError``, ``TypeError``)."""
        value: Any = timeout
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0
        ):
            raise ValueError(f".cache(timeout={timeout!r}): give a number of seconds > 0")
        name: Any = key
        if name is not None and (
            not isinstance(name, str) or not name or any(c in name for c in "\n{}")
        ):
            raise ValueError(f".cache(key={key!r}): give a non-empty string without braces")
        if self.query.select_for_update:
            raise TypeError(
                ".cache() on a select_for_update() queryset: locked rows must come from the "
                "database; drop .cache() or select_for_update()"
            )
        return _Options(timeout, key)

    @classmethod
    def as_manager(cls) -> Any:
        """A manager for this queryset class whose ``cache()`` is ``CachedManager``'s
        (no clone, and its queryset named by the model: see ``_perfkit_pristine``)."""
        parent = super().as_manager
        if parent.__func__ is not _DJANGO_AS_MANAGER:  # type: ignore[attr-defined]
            return parent()  # a library's own manager (a tree's, say) comes first
        manager = CachedManager.from_queryset(cls)()
        manager._built_with_as_manager = True
        return manager

    as_manager.queryset_only = True  # type: ignore[attr-defined]

    def nocache(self) -> Any:
        """Opt this queryset out (also out of ``PERFKIT["CACHE"]["MODELS"]``)."""
        clone = _private(self)._chain()
        clone._perfkit_cache = _OFF
        return clone

    # -- plumbing -----------------------------------------------------------------

    def _clone(self) -> Any:
        clone = super()._clone()  # type: ignore[misc]
        options = self._perfkit_cache
        if isinstance(options, _Options) and options.key is not None:
            # Cloned by a method that is not recorded (annotate(), values(),
            # prefetch_related()...): the key and the recorded steps no longer
            # say what the query is, so the clone is named by its query.
            options = _Options(options.timeout, None)
        clone._perfkit_cache = options
        return clone

    # -- steps recorded, not built (a keyed or the manager's own queryset) -------------

    @property
    def query(self) -> Any:
        if self._perfkit_steps:
            self._perfkit_apply_steps()
        return _QUERY.fget(self)  # type: ignore[attr-defined]

    @query.setter
    def query(self, value: Any) -> None:
        # Another query: neither the manager's own nor what the key names.
        self._perfkit_steps = None
        self._perfkit_steps_name = ""
        self._perfkit_pristine = False
        options = self._perfkit_cache
        if isinstance(options, _Options) and options.key is not None:
            self._perfkit_cache = _Options(options.timeout, None)
        _QUERY.fset(self, value)  # type: ignore[attr-defined]

    def _perfkit_apply_steps(self) -> None:
        """Build the recorded steps into this queryset's query, with Django's own methods."""
        steps = self._perfkit_steps
        private = _private(self)
        built: Any = self.__class__(
            model=self.model,
            query=self._perfkit_base.chain(),
            using=private._db,
            hints=private._hints,
        )
        for name, args, kwargs in steps or ():
            # The methods after this mixin's: a subclass's own filter() ran
            # when the step was recorded, with the arguments recorded.
            following: Any = super(CachedQuerySetMixin, built)
            if name == "slice":
                built = following.__getitem__(slice(args[0], args[1]))
            else:
                built = getattr(following, name)(*args, **kwargs)
        # Only once every step is built: a step that raises (a misspelt field)
        # raises again on the next use, and never leaves a query without it.
        # Steps recorded from now on are recorded on the query built here.
        private._query = built._query
        self._perfkit_steps = ()

    def _perfkit_record(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A queryset with the step recorded, or ``None`` when it must be built now."""
        steps = self._perfkit_steps
        private = _private(self)
        if (
            steps is None
            or self._perfkit_sliced
            or private._sticky_filter
            or private._defer_next_filter
            or private._fields is not None
            or private._query.is_sliced
            or private._query.combinator
        ):
            return None
        if name == "slice":
            text: str | None = f"{args[0]}-{args[1]}"
        else:
            text = _steps_text(args, kwargs)
            if text is None:
                return None
        # Recorded on the same base as this queryset's own steps (not on its
        # query, which another thread may be building them into now).
        base = self._perfkit_base if steps else private._query
        clone: Any = self.__class__(
            model=self.model, query=base, using=private._db, hints=private._hints
        )
        clone._perfkit_base = base
        clone._sticky_filter = False
        clone._for_write = private._for_write
        clone._prefetch_related_lookups = private._prefetch_related_lookups
        clone._known_related_objects = private._known_related_objects
        clone._iterable_class = private._iterable_class
        clone._fields = private._fields
        clone._perfkit_cache = self._perfkit_cache
        clone._perfkit_pristine = self._perfkit_pristine
        clone._perfkit_steps = (*steps, (name, args, kwargs))
        clone._perfkit_steps_name = f"{self._perfkit_steps_name}|{name}({text})"
        clone._perfkit_sliced = name == "slice"
        return clone

    def filter(self, *args: Any, **kwargs: Any) -> Any:
        recorded = self._perfkit_record("filter", args, kwargs)
        return recorded if recorded is not None else super().filter(*args, **kwargs)

    def exclude(self, *args: Any, **kwargs: Any) -> Any:
        recorded = self._perfkit_record("exclude", args, kwargs)
        return recorded if recorded is not None else super().exclude(*args, **kwargs)

    def select_related(self, *fields: Any) -> Any:
        recorded = self._perfkit_record("select_related", fields, {})
        return recorded if recorded is not None else super().select_related(*fields)

    def order_by(self, *field_names: Any) -> Any:
        recorded = self._perfkit_record("order_by", field_names, {})
        return recorded if recorded is not None else super().order_by(*field_names)

    def __getitem__(self, k: Any) -> Any:
        if (
            self._perfkit_steps is not None
            and type(k) is slice
            and k.step is None
            and self._result_cache is None
            and (k.start is None or (type(k.start) is int and k.start >= 0))
            and (k.stop is None or (type(k.stop) is int and k.stop >= 0))
        ):
            recorded = self._perfkit_record("slice", (k.start, k.stop), {})
            if recorded is not None:
                return recorded
        return super().__getitem__(k)

    def _perfkit_lookup(
        self, kind: str, extra: str = "", source: Callable[[], Any] | None = None
    ) -> entries.Lookup | None:
        """Where this evaluation's entry lives, or ``None`` to run it uncached.

        ``source``: makes the queryset the result comes from, when it is not this
        one (``get()`` with an explicit key names its entry before filtering).
        """
        options = self._perfkit_cache
        if options == _OFF:
            return None
        settings = get_settings()
        cache_settings = settings.cache
        if not settings.enabled or not cache_settings.enabled:
            return None
        if options is None:
            model_timeout = cache_settings.models.get(self.model._meta.label_lower)
            if model_timeout is None:
                return None
            options = _Options(model_timeout, None)
        assert isinstance(options, _Options)
        private = _private(self)
        if private._for_write or private._query.select_for_update:
            return None
        if private._known_related_objects:
            # A related manager's queryset (category.articles.all()) hands its
            # rows the caller's own instance; cached, other requests would get
            # that instance, unsaved edits and all. Filter the model instead:
            # Article.objects.filter(category=category).cache().
            return None
        alias = self.db
        connection = connections[alias]
        dirty = dirty_tables(connection) if connection.in_atomic_block else None
        if not ready_for_reads(alias):
            return None
        tokens = tokens_for(alias)
        sql_params: tuple[str, tuple[Any, ...]] | None = None
        if dirty:
            if source is not None:
                return None  # rare; the caller takes the general path
            # The transaction wrote something: which tables does this read?
            try:
                sql_params = analysis.query_sql(self)
            except EmptyResultSet:
                return None
            if "*" in dirty or analysis.tables_in(sql_params[0]) & dirty:
                return None
            if self.model._meta.db_table in dirty:
                return None
            if private._prefetch_related_lookups:
                prefetched = analysis.prefetch_tables(
                    self.model, tuple(private._prefetch_related_lookups)
                )
                if prefetched is None or prefetched & dirty:
                    return None
        if options.key is not None:
            # The key names the query; what it is evaluated as is added here.
            # Steps recorded after .cache(key=...) are named, not built: the
            # marks are the base's, before or after the steps are built.
            query = self._perfkit_base if self._perfkit_base is not None else private._query
            shape = f"{private._iterable_class.__qualname__}:{private._fields}"
            name = (
                f"k:{self.model._meta.label_lower}:{options.key}:{kind}:{extra}:{shape}:"
                f"{query.low_mark}:{query.high_mark}{self._perfkit_steps_name}"
            )
        elif self._perfkit_pristine:
            # Model.objects.cache() itself: the model's default query, which only
            # the model and the queryset class decide (the alias is in the key),
            # plus the steps recorded on it since.
            cls = type(self)
            name = (
                f"p:{self.model._meta.label_lower}:{cls.__module__}.{cls.__qualname__}:"
                f"{kind}:{extra}{self._perfkit_steps_name}"
            )
        else:
            state = analysis.fingerprint(self)
            if state is None:
                if sql_params is None:
                    try:
                        sql_params = analysis.query_sql(self)
                    except EmptyResultSet:
                        return None
                state = analysis.sql_state(*sql_params, self)
            name = analysis.entry_name(self, kind, extra, state)
        timeout = options.timeout or cache_settings.default_timeout
        return entries.Lookup(
            store=not snapshot_reads(connection),
            alias=alias,
            entry=tokens.key("q", name),
            lock=tokens.key("l", name),
            timeout=float(timeout),
            kind=kind,
            settings=cache_settings,
            make_plan=(
                functools.partial(_plan_of, source)
                if source is not None
                else functools.partial(self._perfkit_plan, sql_params)
            ),
        )

    def _perfkit_plan(self, sql_params: tuple[str, tuple[Any, ...]] | None) -> Any:
        if sql_params is None:
            try:
                sql_params = analysis.query_sql(self)
            except EmptyResultSet:
                return None
        return analysis.plan(self, sql_params[0], tokens_for(self.db))

    def _perfkit_rows(self) -> list[Any]:
        qs = _private(self)
        rows: list[Any] = list(qs._iterable_class(qs))
        qs._result_cache = rows
        if qs._prefetch_related_lookups and not qs._prefetch_done:
            qs._prefetch_related_objects()
        return rows

    def _fetch_all(self) -> None:
        if self._result_cache is None:
            lookup = self._perfkit_lookup("rows")
            if lookup is not None:
                self._result_cache = entries.get(lookup, self._perfkit_rows)
                self._prefetch_done = True
                return
        super()._fetch_all()

    def get(self, *args: Any, **kwargs: Any) -> Any:
        options = self._perfkit_cache
        if isinstance(options, _Options) and (
            (options.key is not None and not _private(self)._query.combinator)
            or self._perfkit_pristine
        ):
            # An explicit key, or Model.objects.cache() itself, names the entry
            # without the filtered query: a hit needs no filtering, cloning,
            # pickling or compiling at all. The entry holds the rows get()
            # reads (up to MAX_GET_RESULTS), so that "no such row" is cached
            # too, until a row that matches is written.
            lookup = self._perfkit_get_lookup(args, kwargs)
            if lookup is not None:
                # Cloned only on a miss: a hit never runs it.
                rows = entries.get(lookup, functools.partial(_get_rows, self, args, kwargs))
                return _one(self.model, rows)
            # The key names get()'s own entry, never the filtered rows': without
            # the shortcut, the rows are named by their query.
            return self._perfkit_without_key(options).get(*args, **kwargs)
        return super().get(*args, **kwargs)

    def _perfkit_get_lookup(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> entries.Lookup | None:
        """The entry of a keyed (or pristine) ``get()``'s rows, named by the call."""
        extra = _call_extra(args, kwargs)
        if extra is None:
            return None
        source = functools.partial(_get_clone, self, args, kwargs)
        return self._perfkit_lookup("rows", f"get/{extra}", source=source)

    def _perfkit_without_key(self, options: _Options) -> Any:
        clone = _private(self)._chain()
        clone._perfkit_cache = _Options(options.timeout, None)
        return clone

    def count(self) -> int:
        if self._result_cache is None:
            lookup = self._perfkit_lookup("count")
            if lookup is not None:
                return int(entries.get(lookup, super().count))
        return super().count()

    def exists(self) -> bool:
        if self._result_cache is None:
            lookup = self._perfkit_lookup("exists")
            if lookup is not None:
                return bool(entries.get(lookup, super().exists))
        return super().exists()

    def aggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        extra = _call_extra(args, kwargs)
        lookup = None if extra is None else self._perfkit_lookup("aggregate", extra)
        if lookup is not None:
            compute = functools.partial(super().aggregate, *args, **kwargs)
            return entries.get(lookup, compute)  # type: ignore[no-any-return]
        return super().aggregate(*args, **kwargs)

    # -- async: Redis on the event loop, the query (on a miss) in a thread -------------

    async def _perfkit_alookup(
        self, kind: str, extra: str = "", source: Callable[[], Any] | None = None
    ) -> entries.Lookup | None:
        if pending_epochs() and not await aready_for_reads(self.db):
            # After an outage: the epoch bump goes through redis.asyncio, not a
            # blocking call on the event loop; until it lands, no entry is read.
            return None
        try:
            return self._perfkit_lookup(kind, extra, source)
        except SynchronousOnlyOperation:
            # Compiling needed the database (a backend's first version query).
            return await sync_to_async(self._perfkit_lookup)(kind, extra, source)

    async def _perfkit_afetch_all(self) -> None:
        if self._result_cache is None:
            lookup = await self._perfkit_alookup("rows")
            if lookup is not None:
                self._result_cache = await entries.aget(lookup, sync_to_async(self._perfkit_rows))
                self._prefetch_done = True
                return
        await sync_to_async(self._fetch_all)()

    def __aiter__(self) -> AsyncIterator[Any]:
        async def generator() -> AsyncIterator[Any]:
            await self._perfkit_afetch_all()
            for item in self._result_cache:  # type: ignore[union-attr]
                yield item

        return generator()

    async def aget(self, *args: Any, **kwargs: Any) -> Any:
        """``get()`` with the lookup on the event loop (Django's own hops to a thread)."""
        if type(self).get is not CachedQuerySetMixin.get:
            # A subclass's own get() (a soft-delete filter, say) must run.
            return await sync_to_async(self.get)(*args, **kwargs)
        options = self._perfkit_cache
        if isinstance(options, _Options) and (
            (options.key is not None and not _private(self)._query.combinator)
            or self._perfkit_pristine
        ):
            extra = _call_extra(args, kwargs)
            lookup = (
                None
                if extra is None
                else await self._perfkit_alookup(
                    "rows", f"get/{extra}", functools.partial(_get_clone, self, args, kwargs)
                )
            )
            if lookup is not None:
                compute = sync_to_async(functools.partial(_get_rows, self, args, kwargs))
                return _one(self.model, await entries.aget(lookup, compute))
            return await self._perfkit_without_key(options).aget(*args, **kwargs)
        if self.query.combinator and (args or kwargs):
            return await super().aget(*args, **kwargs)
        clone: Any = (
            _private(self)._chain() if self.query.combinator else self.filter(*args, **kwargs)
        )
        if self.query.can_filter() and not self.query.distinct_fields:
            clone = clone.order_by()
        if not clone.query.select_for_update:
            clone.query.set_limits(high=MAX_GET_RESULTS)
        await clone._perfkit_afetch_all()
        return _one(self.model, clone._result_cache)

    async def afirst(self) -> Any:
        """``first()``, with a hit answered on the event loop."""
        return await self._perfkit_aedge("first")

    async def alast(self) -> Any:
        """``last()``, with a hit answered on the event loop."""
        return await self._perfkit_aedge("last")

    async def _perfkit_aedge(self, which: str) -> Any:
        check = getattr(self, "_check_ordering_first_last_queryset_aggregation", None)
        if check is not None:
            check(method=which)
        queryset: Any = self
        if which == "first":
            queryset = self if self.ordered else self.order_by("pk")
        else:
            queryset = self.reverse() if self.ordered else self.order_by("-pk")
        async for obj in queryset[:1]:
            return obj
        return None

    async def acount(self) -> int:
        if self._result_cache is None:
            lookup = await self._perfkit_alookup("count")
            if lookup is not None:
                return int(await entries.aget(lookup, sync_to_async(super().count)))
        return await super().acount()

    async def aexists(self) -> bool:
        if self._result_cache is None:
            lookup = await self._perfkit_alookup("exists")
            if lookup is not None:
                return bool(await entries.aget(lookup, sync_to_async(super().exists)))
        return await super().aexists()

    async def aaggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        extra = _call_extra(args, kwargs)
        lookup = None if extra is None else await self._perfkit_alookup("aggregate", extra)
        if lookup is not None:
            compute = sync_to_async(functools.partial(super().aggregate, *args, **kwargs))
            return await entries.aget(lookup, compute)  # type: ignore[no-any-return]
        return await super().aaggregate(*args, **kwargs)


def _get_clone(queryset: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The queryset Django's ``get()`` evaluates: filtered, unordered, at most
    ``MAX_GET_RESULTS`` rows (never a combinator or ``select_for_update()``
    queryset here)."""
    clone = queryset.filter(*args, **kwargs)
    if queryset.query.can_filter() and not queryset.query.distinct_fields:
        clone = clone.order_by()
    clone.query.set_limits(high=MAX_GET_RESULTS)
    return clone


def _get_rows(queryset: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    return list(_get_clone(queryset.nocache(), args, kwargs))


def _one(model: Any, rows: list[Any]) -> Any:
    """``get()``'s answer from the rows it read."""
    if len(rows) == 1:
        return rows[0]
    if not rows:
        raise model.DoesNotExist(f"{model._meta.object_name} matching query does not exist.")
    raise model.MultipleObjectsReturned(
        "get() returned more than one {} -- it returned {}!".format(
            model._meta.object_name,
            len(rows) if len(rows) < MAX_GET_RESULTS else f"more than {MAX_GET_RESULTS - 1}",
        )
    )


def _private(queryset: Any) -> Any:
    """The queryset, for its private attributes (not in django-stubs)."""
    return queryset


def _call_extra(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    if not args and all(type(value) is int or type(value) is str for value in kwargs.values()):
        # get(pk=42), get(slug="...") (most calls): the repr of ints and strings
        # is exact and unambiguous (a string's is quoted and escaped), and costs
        # a fraction of pickling. A short one without colons (the separator of
        # the entry's name) names the entry as it is.
        try:
            text = ",".join([f"{name}={value!r}" for name, value in sorted(kwargs.items())])
        except ValueError:  # an int longer than sys.get_int_max_str_digits()
            return analysis.call_state(args, sorted(kwargs.items()), _time_zone())
        if "__" in text:
            # A lookup (published_at__date=...) may be computed in the active
            # time zone: the zone is part of the name. Plain field=value is not.
            text += f"@{_time_zone()}"
        if len(text) <= 64 and ":" not in text:
            return text
        return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()
    # Hashed state, not repr(): a model instance's repr is its __str__, which
    # need not be unique; an expression's repr leaves out some of its arguments.
    return analysis.call_state(args, sorted(kwargs.items()), _time_zone())


def _steps_text(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """A recorded step's arguments in the entry's name (``None``: cannot be named)."""
    if all(type(a) is int or type(a) is str for a in args) and all(
        type(v) is int or type(v) is str for v in kwargs.values()
    ):
        try:
            text = ",".join(
                [*[repr(a) for a in args], *[f"{n}={v!r}" for n, v in sorted(kwargs.items())]]
            )
        except ValueError:  # an int longer than sys.get_int_max_str_digits()
            return analysis.call_state(args, sorted(kwargs.items()), _time_zone())
        if "__" in text:
            text += f"@{_time_zone()}"  # a lookup may depend on the time zone
        if len(text) <= 64:
            return text
        return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()
    return analysis.call_state(args, sorted(kwargs.items()), _time_zone())


def _time_zone() -> str:
    return timezone.get_current_timezone_name() if django_settings.USE_TZ else ""


def snapshot_reads(connection: Any) -> bool:
    """Do this connection's reads in its open transaction come from an older snapshot?

    Then a result may be older than the tokens captured before its query, and
    must not be stored: SQLite transactions (in WAL mode a reader keeps its
    snapshot), and REPEATABLE READ or SERIALIZABLE isolation elsewhere.
    """
    if not connection.in_atomic_block:
        return False
    if connection.vendor == "sqlite":
        return True
    level = connection.settings_dict.get("OPTIONS", {}).get("isolation_level")
    if level is None:
        return connection.vendor not in ("postgresql", "mysql")  # others: not checked
    # "read committed", IsolationLevel.READ_COMMITTED: fresh data per statement.
    # Anything else, a bare number included, is treated as a snapshot.
    return "COMMITTED" not in str(level).upper().replace("_", " ")


def _plan_of(source: Callable[[], Any]) -> Any:
    return source()._perfkit_plan(None)


class CachedQuerySet(CachedQuerySetMixin, models.QuerySet[M], Generic[M]):
    """A ``QuerySet`` with ``.cache()``."""


class CachedManager(models.Manager.from_queryset(CachedQuerySet)):  # type: ignore[misc]
    """A manager whose querysets have ``.cache()``: ``objects = CachedManager()``."""

    def cache(self, timeout: float | None = None, key: str | None = None) -> Any:
        """``self.get_queryset().cache(...)``, without the clone when it can be skipped."""
        if (
            type(self).get_queryset is not _new_queryset
            or "get_queryset" in vars(self)
            or self._queryset_class.cache is not CachedQuerySetMixin.cache
        ):
            # An overridden get_queryset() (a related manager's returns its
            # prefetched queryset) may hand out a queryset someone else holds;
            # a queryset class with its own cache() must have it called.
            return self.get_queryset().cache(timeout, key)
        # Django's own get_queryset() makes a queryset nobody else holds, so
        # the option is set on it, not on a clone of it: one whole queryset
        # clone less per Model.objects.cache(...) call, on every cache hit.
        queryset = self.get_queryset()
        queryset._perfkit_cache = queryset._perfkit_options(timeout, key)
        queryset._perfkit_pristine = True
        queryset._perfkit_steps = ()
        return queryset


_new_queryset = models.Manager.get_queryset
_QUERY = models.QuerySet.query
_DJANGO_AS_MANAGER = models.QuerySet.as_manager.__func__  # type: ignore[attr-defined]
