"""``@cached_on_write``: a function whose results are recomputed when their data changes.

Entries are ``.cache()``'s (:mod:`django_perfkit.cache.entries`): valid while
their version tokens hold the values they were stored with; a miss takes the
same single-flight protocol. A hit is one ``MGET`` of the entry and its
tokens (known in advance here), compared in Python. What differs is who
computes. A ``.cache()`` entry is computed by the first reader after a write;
an on-write entry by the write: when a dependency's signal reports a change,
the affected entries' own tokens (``e:``) are bumped and the stored ones
recomputed right after the commit, so the next reader hits.

An entry depends on:

=====================  ==================================================
``epoch``              everything of the alias (migrations, outages)
``a:<function>``       every entry of the function (``invalidate_all()``,
                       a mapping that failed)
``e:<function>:<key>`` this entry: bumped by a signalled write that affects
                       it, just before it is recomputed
``w:<table>``          each table the function depends on (its models and
                       their many-to-many tables): bumped by writes that no
                       signal announced (``update()``, ``bulk_create``, raw
                       SQL), see :mod:`django_perfkit.versions.announced`
``s:``/``t:<table>``   a table the function was seen to read but does not
                       declare: any write to it invalidates the entry
=====================  ==================================================
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, timedelta
from datetime import time as time_of_day
from decimal import Decimal
from typing import Any, Generic, ParamSpec, TypeVar
from urllib.parse import quote
from uuid import UUID

from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections, models

from django_perfkit.cache import entries
from django_perfkit.cache.analysis import Plan
from django_perfkit.conf import get_settings
from django_perfkit.record import current_record
from django_perfkit.redis import get_gateway
from django_perfkit.versions.tokens import (
    Tokens,
    abump,
    aready_for_reads,
    bump,
    init_seed,
    ready_for_reads,
    tokens_for,
)
from django_perfkit.versions.writes import dirty_tables, reading

__all__ = ["OnWriteFunction", "cached_on_write"]

logger = logging.getLogger("django_perfkit.cache")

P = ParamSpec("P")
R = TypeVar("R")

#: ``depends_on``: a model (or "app_label.ModelName") -> instance -> the
#: arguments of the entries it affects: a dict, several dicts, or None.
DependencyMapping = Callable[[Any], Mapping[str, Any] | Iterable[Mapping[str, Any]] | None]

_SCALARS = (str, int, float, Decimal, UUID, date, datetime, time_of_day, timedelta, bool)
_SAFE = re.compile(r"[A-Za-z0-9_.:-]*")
_KEY_MAX = 200


def cached_on_write(
    depends_on: Mapping[type[models.Model] | str, DependencyMapping],
    timeout: float | None = None,
    *,
    defer: bool = False,
    using: str | None = None,
) -> Callable[[Callable[P, R]], OnWriteFunction[P, R]]:
    """Cache a function's results and recompute them when their data changes.

    ``depends_on``: each model whose changes affect results, with a function
    from an instance to the arguments of the entries it affects (a dict, a list
    of dicts, or None for none). ``timeout``: seconds an entry lives (None: until
    its data changes, at most ``PERFKIT["CACHE"]["TOKEN_TTL"]``). ``defer``:
    recompute in a background thread instead of at commit. ``using``: the
    database alias whose writes the function follows (default ``"default"``).
    """

    def decorate(func: Callable[P, R]) -> OnWriteFunction[P, R]:
        return OnWriteFunction(func, depends_on, timeout=timeout, defer=defer, using=using)

    return decorate


def _key_part(function: str, name: str, value: Any) -> str:
    kind = type(value)
    if kind is int:
        return str(value)  # digits and "-": nothing to quote
    if kind is str:
        text = value
    elif value is None or isinstance(value, _SCALARS):
        # str(): 5 and "5", a UUID and its text, name the same entry, as they
        # select the same rows; anything the text does not pin down is refused.
        text = str(value)
    elif kind is tuple or kind is frozenset:
        parts = [_key_part(function, name, item) for item in value]
        if kind is frozenset:
            parts.sort()
        return "(" + ",".join(parts) + ")"
    else:
        raise TypeError(
            f"{function}(): argument {name}={value!r} cannot name a cache entry "
            f"({kind.__name__}); pass a str, int, UUID, date or a tuple of them "
            "(for a model instance, its primary key)"
        )
    return text if _SAFE.fullmatch(text) else quote(text, safe="")


class OnWriteFunction(Generic[P, R]):
    """What ``@cached_on_write`` returns: call it like the function it wraps."""

    def __init__(
        self,
        func: Callable[P, R],
        depends_on: Mapping[type[models.Model] | str, DependencyMapping],
        *,
        timeout: float | None = None,
        defer: bool = False,
        using: str | None = None,
    ) -> None:
        self.func = func
        self.name = f"{func.__module__}.{func.__qualname__}"
        functools.update_wrapper(self, func)
        if inspect.iscoroutinefunction(func):
            raise ImproperlyConfigured(
                f"@cached_on_write on {self.name}: an async function cannot be recomputed at "
                "commit (signals are sync). Decorate a sync function and read it with "
                "`await fn.aget(...)`."
            )
        signature = inspect.signature(func)
        names: list[str] = []
        for parameter in signature.parameters.values():
            if parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
                raise ImproperlyConfigured(
                    f"@cached_on_write on {self.name}: parameter {parameter} cannot be named by "
                    "depends_on's mappings; take only named parameters (def f(article_id): ...)."
                )
            if parameter.default is not parameter.empty:
                raise ImproperlyConfigured(
                    f"@cached_on_write on {self.name}: parameter {parameter.name} has a default. "
                    "An entry is named by every argument, and a write refreshes the entries its "
                    "mapping names: a default would leave the other variants stale. Drop the "
                    "default, or make a second function."
                )
            names.append(parameter.name)
        self._signature = signature
        self.params: tuple[str, ...] = tuple(names)
        self._param_set = frozenset(names)
        self._prefixes = tuple(f"{name}=" for name in names)
        given: Any = (timeout, defer, using, depends_on)  # checked as the caller passed them
        timeout_in, defer_in, using_in, depends_in = given
        if timeout_in is not None and (
            isinstance(timeout_in, bool)
            or not isinstance(timeout_in, (int, float))
            or timeout_in <= 0
        ):
            raise ImproperlyConfigured(
                f"@cached_on_write on {self.name}: timeout={timeout!r}; give seconds > 0, or "
                "None to keep entries until their data changes."
            )
        if not isinstance(defer_in, bool):
            raise ImproperlyConfigured(f"@cached_on_write on {self.name}: defer must be a bool.")
        if using_in is not None and not isinstance(using_in, str):
            raise ImproperlyConfigured(
                f"@cached_on_write on {self.name}: using must be a database alias."
            )
        if not isinstance(depends_in, Mapping) or not depends_in:
            raise ImproperlyConfigured(
                f"@cached_on_write on {self.name}: depends_on must be a non-empty dict of "
                "model -> mapping, e.g. {Comment: lambda c: {'article_id': c.article_id}}."
            )
        ref: Any
        for ref, mapping in depends_in.items():
            model = ref
            if isinstance(model, str):
                if model.count(".") != 1:
                    raise ImproperlyConfigured(
                        f"@cached_on_write on {self.name}: depends_on key {model!r} is not "
                        '"app_label.ModelName".'
                    )
            elif not (isinstance(model, type) and issubclass(model, models.Model)):
                raise ImproperlyConfigured(
                    f"@cached_on_write on {self.name}: depends_on key {model!r} is not a model; "
                    'give a model class or "app_label.ModelName".'
                )
            elif model._meta.abstract:
                raise ImproperlyConfigured(
                    f"@cached_on_write on {self.name}: {model.__name__} is abstract; name the "
                    "concrete models that store the rows."
                )
            if not callable(mapping):
                raise ImproperlyConfigured(
                    f"@cached_on_write on {self.name}: the mapping of {model!r} is not "
                    "callable; give a function from an instance to the function's arguments."
                )
        self.depends_on = dict(depends_on)
        self.timeout = float(timeout) if timeout is not None else None
        self.defer = defer
        self.using = using or DEFAULT_DB_ALIAS
        #: Tables of the declared models and their many-to-many tables (set at registration).
        self.tables: frozenset[str] = frozenset()
        #: Tables the function was seen to read without declaring them.
        self.learned: frozenset[str] = frozenset()
        #: Seen to read other cached entries (their tokens are then in its
        #: entries' headers, which a hit's MGET cannot check): hits use READ.
        self.reads_entries = False
        #: Recomputes this process made (at commit, deferred, refresh()).
        self.recomputes = 0
        self._lock = threading.Lock()
        self._keys_cache: dict[tuple[str, str], tuple[list[str], list[bytes]]] = {}
        from django_perfkit.cache.onwrite import registry

        registry.add(self)

    def __repr__(self) -> str:
        return f"<cached_on_write {self.name}>"

    # -- naming entries -------------------------------------------------------------

    def key(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        """The arguments by name, and the text that names their entry."""
        if not args and kwargs.keys() == self._param_set:
            named = dict(kwargs)
        else:
            try:
                bound = self._signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"{self.name}(): {exc}") from None
            named = dict(bound.arguments)
        function = self.name
        text = ",".join(
            [
                prefix + _key_part(function, name, named[name])
                for name, prefix in zip(self.params, self._prefixes, strict=True)
            ]
        )
        if len(text) > _KEY_MAX:
            text = "h" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
        return named, text

    def _names(self, tokens: Tokens, text: str) -> tuple[str, str, str]:
        name = f"{self.name}:{text}"
        return tokens.key("o", name), tokens.key("l", "o:" + name), tokens.key("e", name)

    def entry_key(self, tokens: Tokens, text: str) -> str:
        return self._names(tokens, text)[0]

    def _static(self, tokens: Tokens, own_token: str) -> list[str]:
        """The tokens an entry depends on, in the order its header records them."""
        static = [tokens.epoch, tokens.key("a", self.name), own_token]
        static.extend(tokens.key("w", table) for table in sorted(self.tables))
        for table in sorted(self.learned):
            static.extend((tokens.scan(table), tokens.table(table)))
        return static

    def _plan(self, tokens: Tokens, own_token: str) -> Plan:
        static = self._static(tokens, own_token)
        return Plan(
            tokens=tokens,
            base="",
            tables=set(self.tables | self.learned),
            static=static,
            always=set(static),
        )

    def _read_keys(self, text: str) -> list[str]:
        """``[entry, *tokens]`` of the entry named ``text``: what a hit ``MGET``s."""
        return self._hit_plan(text)[0]

    def _hit_plan(self, text: str) -> tuple[list[str], list[bytes]]:
        """The keys a hit reads, and the header lines its entry must start with.

        The lines: the token count, then each token's name (the values come from
        the ``MGET``). Built once per entry name and kept (4,096 at most).
        """
        tokens = tokens_for(self.using)
        cache_key = (tokens.base, text)
        plan = self._keys_cache.get(cache_key)
        if plan is None:
            entry, _lock, own = self._names(tokens, text)
            static = self._static(tokens, own)
            lines = [b"%d\n" % len(static), *(key.encode() + b"\n" for key in static)]
            plan = ([entry, *static], lines)
            if len(self._keys_cache) >= 4096:
                self._keys_cache.clear()
            self._keys_cache[cache_key] = plan
        return plan

    def set_tables(self, tables: frozenset[str]) -> None:
        self.tables = tables
        self._keys_cache.clear()

    def _timeout(self) -> float:
        if self.timeout is not None:
            return self.timeout
        return float(get_settings().cache.token_ttl)

    def _usable(self) -> bool | None:
        """May the cache be used now? ``None``: no; else whether a result may be stored."""
        settings = get_settings()
        if not settings.enabled or not settings.cache.enabled:
            return None
        connection = connections[self.using]
        if not connection.in_atomic_block:
            return True
        dirty = dirty_tables(connection)
        if dirty and ("*" in dirty or not dirty.isdisjoint(self.tables | self.learned)):
            # This transaction wrote what the value depends on: the entry is
            # older than what this connection sees, and what it would compute
            # is not committed.
            return None
        from django_perfkit.cache.queryset import snapshot_reads

        return not snapshot_reads(connection)

    def _entry(self, text: str, store: bool = True) -> tuple[entries.Lookup, Plan]:
        """Where the entry named ``text`` lives, and the tokens it depends on."""
        tokens = tokens_for(self.using)
        entry, lock, own = self._names(tokens, text)
        plan = self._plan(tokens, own)
        lookup = entries.Lookup(
            alias=self.using,
            entry=entry,
            lock=lock,
            timeout=self._timeout(),
            kind="onwrite",
            settings=get_settings().cache,
            make_plan=lambda: plan,
            store=store,
        )
        return lookup, plan

    def _lookup(self, text: str, store: bool = True) -> entries.Lookup:
        """For the general protocol (misses: ``.cache()``'s path)."""
        return self._entry(text, store)[0]

    def _compute(self, kwargs: dict[str, Any]) -> Any:
        # The dict of the entry being computed: this one's own, or, computing
        # in an enclosing entry's context, that one's; it grows only if the
        # function read other entries.
        inner = entries.depending.get()
        before = 0 if inner is None else len(inner)
        value = self.func(**kwargs)  # type: ignore[call-arg]
        seen = reading.get()
        if seen:
            self._learn(seen)
        if inner is not None and len(inner) > before:
            self.reads_entries = True
        return value

    def _learn(self, seen: set[str]) -> None:
        new = seen - self.tables - self.learned - {"*"}
        if not new:
            return
        with self._lock:
            self.learned = self.learned | new
            self._keys_cache.clear()
        logger.warning(
            "perfkit: %s read %s, which depends_on does not name; any write to %s now "
            "invalidates every entry (name its model in depends_on to refresh instead)",
            self.name,
            ", ".join(sorted(new)),
            "it" if len(new) == 1 else "them",
        )

    @staticmethod
    def _valid_under(keys: list[str], values: Any) -> None:
        # A hit inside another entry's computation (a cached fragment's body):
        # that entry depends on this entry's tokens, with the values they had.
        entries.depend(zip(keys, values, strict=True))

    # -- reads ------------------------------------------------------------------------

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._read(*self.key(args, kwargs))  # type: ignore[no-any-return]

    async def aget(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """``await fn.aget(...)``: the async read (Redis through ``redis.asyncio``)."""
        return await self._aread(*self.key(args, kwargs))  # type: ignore[no-any-return]

    # A hit is one MGET of the entry and the tokens it depends on, compared here,
    # instead of the Lua READ script: an on-write entry's tokens are known before
    # it is read (a .cache() entry's are not), and a plain MGET costs Redis less
    # than running a script. The comparison is the script's: every token the
    # entry was stored with still has that value. Anything else (a miss, an
    # entry stored with other tokens, Redis not answering) takes the general
    # path, the one .cache() takes.

    def _hit(self, lines: list[bytes], values: Any) -> Any:
        """The value if ``values`` (an ``MGET`` of the entry and its tokens) hold a valid
        entry, else MISSING. ``lines``: from :meth:`_hit_plan`."""
        if type(values) is not list or len(values) != len(lines):
            return entries.MISSING
        raw = values[0]
        if type(raw) is not bytes:
            return entries.MISSING
        if not raw.startswith(lines[0]):
            # Stored with other tokens than this process expects: by a process
            # that saw the function read other entries (their tokens are in
            # the header), or learned other tables. Hits then take READ.
            self.reads_entries = True
            return entries.MISSING
        # The header the entry has if every token still has its stored value:
        # "<n>\n" then "<token>\n<value>\n" for each.
        expected = [lines[0]]
        for line, value in zip(lines[1:], values[1:]):  # noqa: B905 (lengths checked)
            if value is None:
                return entries.MISSING
            expected += (line, value, b"\n")
        header = b"".join(expected)
        if not raw.startswith(header):
            return entries.MISSING
        value, refresh = entries.decode(raw[len(header) :], get_settings().cache.early_refresh_beta)
        return entries.MISSING if refresh else value

    def _read(self, named: dict[str, Any], text: str) -> Any:
        store = self._usable()
        if store is None or not ready_for_reads(self.using):
            return self.func(**named)  # type: ignore[call-arg]
        if not self.reads_entries:
            started = time.perf_counter()
            keys, lines = self._hit_plan(text)
            values = _mget(keys)
            value = self._hit(lines, values)
            if value is not entries.MISSING:
                self._valid_under(keys[1:], values[1:])
                entries.count_lookup(True, time.perf_counter() - started)
                return value
        lookup = self._lookup(text, store)
        return entries.get(lookup, functools.partial(self._compute, named))

    async def _aread(self, named: dict[str, Any], text: str) -> Any:
        store = self._usable()
        compute = sync_to_async(functools.partial(self._compute, named))
        if store is None or not await aready_for_reads(self.using):
            return await compute()
        if not self.reads_entries:
            started = time.perf_counter()
            keys, lines = self._hit_plan(text)
            values = await _amget(keys)
            value = self._hit(lines, values)
            if value is not entries.MISSING:
                self._valid_under(keys[1:], values[1:])
                entries.count_lookup(True, time.perf_counter() - started)
                return value
        return await entries.aget(self._lookup(text, store), compute)

    def get_many(
        self,
        calls: Iterable[Mapping[str, Any]],
        compute_many: Callable[[list[dict[str, Any]]], Iterable[Any]] | None = None,
    ) -> list[R]:
        """The values for several argument dicts, in order; the hits in one round trip.

        ``comment_count.get_many([{"article_id": a.pk} for a in page])`` instead of
        one read per row. The misses are computed one by one, or, given
        ``compute_many``, all at once: it takes the missing argument dicts and
        returns their values in the same order (one grouped query instead of
        one per row); the values are stored as if computed one by one.
        """
        keyed = [self.key((), call) for call in calls]
        values = self._read_many(keyed)
        if values is None:
            if compute_many is not None:
                return self._checked(compute_many, [named for named, _text in keyed])
            return [self._read(named, text) for named, text in keyed]
        missing = [i for i, value in enumerate(values) if value is entries.MISSING]
        if missing and compute_many is not None:
            wanted = [keyed[i] for i in missing]
            if self._usable():
                found = self._compute_many(wanted, compute_many)
            else:  # an older snapshot (REPEATABLE READ, SQLite): read, never store
                found = self._checked(compute_many, [named for named, _text in wanted])
            for i, value in zip(missing, found, strict=True):
                values[i] = value
        elif missing:
            for i in missing:
                values[i] = self._read(*keyed[i])
        return values

    async def aget_many(
        self,
        calls: Iterable[Mapping[str, Any]],
        compute_many: Callable[[list[dict[str, Any]]], Iterable[Any]] | None = None,
    ) -> list[R]:
        """The async form of :meth:`get_many` (``compute_many`` runs in a thread)."""
        keyed = [self.key((), call) for call in calls]
        values = await self._aread_many(keyed)
        if values is None:
            if compute_many is not None:
                names = [named for named, _text in keyed]
                return await sync_to_async(self._checked)(compute_many, names)
            return [await self._aread(named, text) for named, text in keyed]
        missing = [i for i, value in enumerate(values) if value is entries.MISSING]
        if missing and compute_many is not None:
            wanted = [keyed[i] for i in missing]
            if self._usable():
                found = await sync_to_async(self._compute_many)(wanted, compute_many)
            else:
                names = [named for named, _text in wanted]
                found = await sync_to_async(self._checked)(compute_many, names)
            for i, value in zip(missing, found, strict=True):
                values[i] = value
        elif missing:
            for i in missing:
                values[i] = await self._aread(*keyed[i])
        return values

    def _read_many(self, keyed: list[tuple[dict[str, Any], str]]) -> list[Any] | None:
        """The stored values (``MISSING`` for misses); None when the cache is not usable."""
        if not keyed or self._usable() is None or not ready_for_reads(self.using):
            return None
        started = time.perf_counter()
        if self.reads_entries:
            # Headers an MGET cannot check: one READ per entry.
            gateway = get_gateway()
            whole = ["whole"] if entries.depending.get() is not None else []
            raws = [gateway.run_script(entries.READ, [key], whole, None) for key in
                    self._entry_keys(keyed)]  # fmt: skip
            return self._stored_values(raws, started)
        per_entry, union = self._many_keys(keyed)
        values = _mget(union)
        return self._many_values(per_entry, union, values, started)

    async def _aread_many(self, keyed: list[tuple[dict[str, Any], str]]) -> list[Any] | None:
        if not keyed or self._usable() is None:
            return None
        if not await aready_for_reads(self.using):
            return None
        started = time.perf_counter()
        if self.reads_entries:
            gateway = get_gateway()
            whole = ["whole"] if entries.depending.get() is not None else []
            raws = [await gateway.arun_script(entries.READ, [key], whole, None) for key in
                    self._entry_keys(keyed)]  # fmt: skip
            return self._stored_values(raws, started)
        per_entry, union = self._many_keys(keyed)
        return self._many_values(per_entry, union, await _amget(union), started)

    def _entry_keys(self, keyed: list[tuple[dict[str, Any], str]]) -> list[str]:
        tokens = tokens_for(self.using)
        return [self.entry_key(tokens, text) for _named, text in keyed]

    def _stored_values(self, raws: list[Any], started: float) -> list[Any]:
        """What READ answered for each entry: its value, or MISSING."""
        found: list[Any] = []
        beta = get_settings().cache.early_refresh_beta
        for raw in raws:
            if not isinstance(raw, bytes):
                found.append(entries.MISSING)
                continue
            raw, valid_under = entries.split_whole(raw) if entries.depending.get() is not None \
                else (raw, [])  # fmt: skip
            value, refresh = entries.decode(raw, beta)
            if value is entries.MISSING or refresh:
                found.append(entries.MISSING)
                continue
            entries.depend(valid_under)
            found.append(value)
        record = current_record()
        if record is not None:
            record.cache.hits += sum(value is not entries.MISSING for value in found)
            record.cache.time += time.perf_counter() - started
        return found

    def _many_keys(
        self, keyed: list[tuple[dict[str, Any], str]]
    ) -> tuple[list[tuple[list[str], list[bytes]]], list[str]]:
        # One MGET for every entry and every token (the shared ones once).
        per_entry = [self._hit_plan(text) for _named, text in keyed]
        union = list(dict.fromkeys(key for keys, _lines in per_entry for key in keys))
        return per_entry, union

    def _many_values(
        self,
        per_entry: list[tuple[list[str], list[bytes]]],
        union: list[str],
        values: Any,
        started: float,
    ) -> list[Any]:
        if not isinstance(values, list) or len(values) != len(union):
            return [entries.MISSING] * len(per_entry)
        by_key = dict(zip(union, values, strict=True))
        found = [self._hit(lines, [by_key[key] for key in keys]) for keys, lines in per_entry]
        hits = sum(value is not entries.MISSING for value in found)
        for (keys, _lines), value in zip(per_entry, found, strict=True):
            if value is not entries.MISSING:
                tokens = keys[1:]
                self._valid_under(tokens, [by_key[key] for key in tokens])
        record = current_record()
        if record is not None:
            record.cache.hits += hits
            record.cache.time += time.perf_counter() - started
        return found

    def _checked(
        self,
        compute_many: Callable[[list[dict[str, Any]]], Iterable[Any]],
        calls: list[dict[str, Any]],
    ) -> list[Any]:
        values = list(compute_many(calls))
        if len(values) != len(calls):
            raise TypeError(
                f"{self.name}.get_many(): compute_many returned {len(values)} values for "
                f"{len(calls)} calls; return one value per call, in order"
            )
        return values

    def _compute_many(
        self,
        keyed: list[tuple[dict[str, Any], str]],
        compute_many: Callable[[list[dict[str, Any]]], Iterable[Any]],
    ) -> list[Any]:
        """Capture each entry's tokens, compute all in one call, store each (the miss protocol)."""
        started = time.perf_counter()
        settings = get_settings().cache
        gateway = get_gateway()
        lock_ms = int(settings.lock_timeout * 1000)
        # Missing tokens are created at capture: all captures come before the
        # first store, which would otherwise create the shared ones and make
        # every other store refuse its "did not exist" capture.
        token_ms = max(settings.token_ttl * 1000, 2 * int(self._timeout() * 1000))
        seed = init_seed()
        values: list[Any] = [entries.MISSING] * len(keyed)
        captured: list[tuple[entries.Lookup, Plan, str, Any]] = []
        for _named, text in keyed:
            lookup, plan = self._entry(text)
            owner = secrets.token_hex(8)
            reply = gateway.run_script(
                entries.CAPTURE,
                [lookup.lock, lookup.entry, *plan.static],
                [owner, lock_ms, "", seed, token_ms],
                None,
            )
            captured.append((lookup, plan, owner, reply))
        for i, (_lookup, _plan, _owner, reply) in enumerate(captured):
            if isinstance(reply, list) and reply[0] == 2:  # stored meanwhile by another miss
                values[i] = entries.decode(reply[1], 0.0)[0]
        todo = [i for i, value in enumerate(values) if value is entries.MISSING]
        read_tables: set[str] = set()
        # Entries the batch reads: every value of it depends on them (one set
        # for the batch, since which value read what is not known).
        inner: dict[str, Any] = {}
        token = reading.set(read_tables)
        inner_token = entries.depending.set(inner)
        computed_at = time.perf_counter()
        try:
            results = self._checked(compute_many, [keyed[i][0] for i in todo])
        except BaseException:
            for lookup, _plan, owner, _reply in captured:
                gateway.run_script(entries.RELEASE, [lookup.lock], [owner], None)
            raise
        finally:
            reading.reset(token)
            entries.depending.reset(inner_token)
        compute_seconds = time.perf_counter() - computed_at
        self._learn(read_tables)
        if inner:
            self.reads_entries = True
        storable = bool(captured) and (
            entries.storable(captured[0][1], read_tables)
            and entries.inner_storable(captured[0][1], inner, read_tables)
        )
        if entries.depending.get() is not None:
            # Inside another entry's computation: it depends on each value's
            # tokens as captured before the values were computed, and on what
            # the batch read.
            entries.depend(inner.items())
            for _lookup, plan, _owner, reply in captured:
                if storable and isinstance(reply, list) and reply[0] != 2:
                    self._valid_under(plan.static, reply[1:])
                else:
                    entries.unknown_dependency()
        per_value = compute_seconds / max(1, len(todo))
        for i, value in zip(todo, results, strict=True):
            values[i] = value
            lookup, plan, owner, reply = captured[i]
            body = entries.encode(value, lookup, per_value) if storable else None
            if not isinstance(reply, list) or body is None:
                if isinstance(reply, list) and reply[0] == 1:
                    gateway.run_script(entries.RELEASE, [lookup.lock], [owner], None)
                continue
            keys, args = entries.store_args(
                lookup, plan, reply[1:], owner if reply[0] == 1 else "", value, body, None, inner
            )
            gateway.run_script(entries.STORE, keys, args, None)
        record = current_record()
        if record is not None:
            record.cache.misses += len(todo)
            record.cache.hits += len(keyed) - len(todo)
            record.cache.time += time.perf_counter() - started - compute_seconds
        return values

    def peek(self, *args: P.args, **kwargs: P.kwargs) -> R | None:
        """The stored value, or ``None``; never computes."""
        _named, text = self.key(args, kwargs)
        if self._usable() is None or not ready_for_reads(self.using):
            return None
        keys = self._read_keys(text)
        raw = get_gateway().run_script(entries.READ, keys[:1], [], None)
        return self._peeked(raw)  # type: ignore[no-any-return]

    async def apeek(self, *args: P.args, **kwargs: P.kwargs) -> R | None:
        """The async form of :meth:`peek`."""
        _named, text = self.key(args, kwargs)
        if self._usable() is None or not await aready_for_reads(self.using):
            return None
        keys = self._read_keys(text)
        raw = await get_gateway().arun_script(entries.READ, keys[:1], [], None)
        return self._peeked(raw)  # type: ignore[no-any-return]

    @staticmethod
    def _peeked(raw: Any) -> Any:
        if not isinstance(raw, bytes):
            return None
        value, _refresh = entries.decode(raw, 0.0)
        return None if value is entries.MISSING else value

    # -- writes -------------------------------------------------------------------------

    def refresh(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Recompute the entry now, store it, and return the value.

        Inside ``atomic()``, the value is computed for the caller now and
        recomputed for the cache when the transaction commits (what it sees
        now may not be committed, or may be an older snapshot).
        """
        named, text = self.key(args, kwargs)
        connection = connections[self.using]
        if connection.in_atomic_block:
            connection.on_commit(functools.partial(self._refresh_quietly, named, text))
            return self.func(**named)  # type: ignore[call-arg]
        return self._refresh(named, text)  # type: ignore[no-any-return]

    def _refresh(self, named: dict[str, Any], text: str) -> Any:
        if not bump(self.using, [self.own_token(text)]):
            return self.func(**named)  # type: ignore[call-arg]
        return self.recompute(named, text)

    def _refresh_quietly(self, named: dict[str, Any], text: str) -> None:
        with contextlib.suppress(Exception):  # recompute() logs it
            self._refresh(named, text)

    async def arefresh(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """The async form of :meth:`refresh` (the computation runs in a thread)."""
        return await sync_to_async(self.refresh)(*args, **kwargs)

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Drop the entry; the next read recomputes. False if Redis could not be told."""
        _named, text = self.key(args, kwargs)
        tokens = tokens_for(self.using)
        return bump(self.using, [self._names(tokens, text)[2]])

    async def ainvalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """The async form of :meth:`invalidate`."""
        _named, text = self.key(args, kwargs)
        tokens = tokens_for(self.using)
        return await abump(self.using, [self._names(tokens, text)[2]])

    def invalidate_all(self) -> bool:
        """Drop every entry of the function."""
        return bump(self.using, [tokens_for(self.using).key("a", self.name)])

    async def ainvalidate_all(self) -> bool:
        """The async form of :meth:`invalidate_all`."""
        return await abump(self.using, [tokens_for(self.using).key("a", self.name)])

    def own_token(self, text: str) -> str:
        """The ``e:`` token of the entry named ``text`` (bumped before a recompute)."""
        return self._names(tokens_for(self.using), text)[2]

    def recompute(self, named: dict[str, Any], text: str) -> Any:
        """Compute and store one entry whose own token was just bumped.

        Unlike a reader's miss, it does not wait for a lock held by someone
        else: whoever holds it may have computed before this write committed.
        Its store is refused if a later write bumped the token meanwhile (that
        write's recompute stores the newer value). A computation that raises is
        logged and the entry deleted (its token moved already: it would not be
        served, but it would take memory); the write it follows never fails.
        """
        settings = get_settings()
        if not settings.enabled or not settings.cache.enabled:
            return self.func(**named)  # type: ignore[call-arg]
        lookup, _plan = self._entry(text)
        lookup.force = True  # .cache()'s miss protocol, without the wait for the lock
        try:
            value = entries.get(lookup, functools.partial(self._compute, named))
        except Exception:
            logger.exception(
                "perfkit: recomputing %s(%s) failed; its entry is deleted", self.name, text
            )
            entry = lookup.entry
            get_gateway().run(lambda client: client.delete(entry), None)
            raise
        with self._lock:
            self.recomputes += 1
        return value


def _mget(keys: list[str]) -> Any:
    # execute_command: redis-py's mget() adds argument juggling to every call.
    return get_gateway().run(lambda client: client.execute_command("MGET", *keys), None)


async def _amget(keys: list[str]) -> Any:
    gateway = get_gateway()
    if gateway.short_lived_loop():
        # An async view under WSGI: its loop serves one request; the sync
        # client's pooled connection beats opening one for this call.
        return _mget(keys)
    return await gateway.arun(lambda client: client.execute_command("MGET", *keys), None)
