"""Rendered fragments cached under the version tokens of the querysets they show.

``.cache()`` saves the queries of a page, not its rendering; on a list page,
rendering twenty rows can cost more than the queries did. A fragment entry
stores the rendered text itself and depends on the same version tokens the
querysets it shows would depend on (``Plan`` in :mod:`.analysis`), so a write
that would invalidate those querysets' entries invalidates the fragment too.
It goes through the same protocol as every other entry (:mod:`.entries`): one
round trip on a hit, single flight and early refresh on a miss.

Why the querysets must reach the fragment unevaluated: an entry is correct
because its tokens are captured *before* the data it holds is read; a write
that lands after the capture moves a token and the stored text stops matching
(or is refused). Rows read before the fragment began were read before its
capture, and a write in between would go unnoticed: such a fragment is
rendered but not stored. What the body reads that the samples do not cover (a
query on another table, also one answered by another cached entry) keeps the
result from being stored too, with a warning naming the table.

Used through the ``{% cached_as %}`` template tag
(:mod:`django_perfkit.templatetags.perfkit_cache`) or :func:`cached_fragment`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import connections, models

from django_perfkit.cache import analysis, entries
from django_perfkit.conf import get_settings
from django_perfkit.versions.tokens import Tokens, ready_for_reads, tokens_for
from django_perfkit.versions.writes import dirty_tables

__all__ = ["FragmentPlan", "cached_fragment", "fragment_name"]


class FragmentPlan(analysis.Plan):
    """The union of the samples' plans: what a fragment captures, compares and records."""

    __slots__ = ("plans", "samples")

    def __init__(
        self, tokens: Tokens, samples: Sequence[Any], plans: Sequence[analysis.Plan]
    ) -> None:
        static: dict[str, None] = {}
        tables: set[str] = set()
        always: set[str] = set()
        for plan in plans:
            static.update(dict.fromkeys(plan.static))
            tables |= plan.tables
            always |= plan.always
        super().__init__(tokens=tokens, base="", tables=tables, static=list(static), always=always)
        self.samples = list(samples)
        self.plans = list(plans)

    def flags(self, result_kind: str, value: Any) -> tuple[str, list[str]]:
        """Each static key the fragment depends on ("1"/"0"), and its row tokens.

        Asked when the fragment is stored, after its body ran: a sample the body
        evaluated contributes its rows' tokens (as a ``.cache()`` list would),
        one it did not is depended on as a whole.
        """
        needed: set[str] = set()
        row_keys: dict[str, None] = {}
        for sample, plan in zip(self.samples, self.plans, strict=True):
            rows = getattr(sample, "_result_cache", None)
            kind = "rows" if isinstance(rows, list) else "fragment"
            flags, keys = plan.flags(kind, rows)
            needed.update(key for key, flag in zip(plan.static, flags, strict=True) if flag == "1")
            row_keys.update(dict.fromkeys(keys))
        static = set(self.static)
        # A row token that is also a static key is recorded as the static key
        # (captured before the body ran, so compared when stored).
        needed.update(key for key in row_keys if key in static)
        flags = "".join("1" if key in needed else "0" for key in self.static)
        return flags, [key for key in row_keys if key not in static]


def fragment_name(name: str, samples: Sequence[Any], vary: Any, source: str = "") -> str:
    """A hash naming the entry: the name, each sample's query, ``vary``, the body's source.

    Raises ``ValueError`` when ``vary`` cannot be pickled.
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{name}|{source}|".encode())
    for sample in samples:
        state = analysis.fingerprint(sample)
        if state is None:
            try:
                state = analysis.sql_state(*analysis.query_sql(sample), sample)
            except EmptyResultSet:
                state = b"empty"
        digest.update(analysis.entry_name(sample, "fragment", "", state).encode())
    if vary is not None:
        vary_state = analysis.call_state(vary)
        if vary_state is None:
            raise ValueError(
                f"cached fragment {name!r}: vary={vary!r} cannot be pickled; "
                "give plain values (strings, numbers, tuples of them)"
            )
        digest.update(vary_state.encode())
    return digest.hexdigest()


def _check(name: Any, samples: Sequence[Any], timeout: Any) -> None:
    if not isinstance(name, str) or not name:
        raise TypeError(f"cached fragment name {name!r}: give a non-empty string")
    if not samples:
        raise TypeError(
            f"cached fragment {name!r}: give at least one queryset it shows "
            "(its entry depends on what they read)"
        )
    for sample in samples:
        if not isinstance(sample, models.QuerySet):
            raise TypeError(
                f"cached fragment {name!r}: {sample!r} is not a QuerySet; pass the "
                "queryset the fragment shows (Model.objects.filter(...)), unevaluated"
            )
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
    ):
        raise ValueError(f"cached fragment {name!r}: timeout={timeout!r}; give seconds > 0")


def _warn_once(name: str, reason: str) -> None:
    entries.warn_once(f"cached fragment {name!r}", reason)


def cached_fragment(
    name: str,
    samples: Sequence[models.QuerySet[Any]],
    render: Callable[[], str],
    *,
    timeout: float | None = None,
    vary: Any = None,
    source: str = "",
) -> str:
    """The text ``render()`` returns, from Redis while the ``samples`` are unchanged.

    ``samples``: the querysets whose rows the text shows, unevaluated (the body
    evaluates them); the entry depends on what they read. ``vary``: anything
    else the text depends on (the user, the language), a picklable value.
    ``timeout``: seconds (default ``PERFKIT["CACHE"]["DEFAULT_TIMEOUT"]``).
    ``source``: the body's own text, so that editing it changes the entry.
    """
    _check(name, samples, timeout)
    settings = get_settings()
    cache_settings = settings.cache
    if not settings.enabled or not cache_settings.enabled:
        return render()
    aliases = {sample.db for sample in samples}
    if len(aliases) != 1:
        raise ValueError(
            f"cached fragment {name!r}: its querysets use databases {sorted(aliases)}; "
            "cache one fragment per database"
        )
    alias = aliases.pop()
    connection = connections[alias]
    store = True
    if connection.in_atomic_block:
        from django_perfkit.cache.queryset import snapshot_reads

        if dirty_tables(connection):
            # The transaction wrote something: an entry read now could be older
            # than what this connection sees. Render; the next request caches.
            return render()
        store = not snapshot_reads(connection)
    if any(sample._result_cache is not None for sample in samples):
        # Its rows were read before the tokens are captured (see the module
        # docstring): a hit is still correct, a computed text is not stored.
        _warn_once(
            name,
            "a queryset was evaluated before the fragment began; pass it "
            "unevaluated and let the fragment's body iterate it",
        )
        store = False
    if not ready_for_reads(alias):
        return render()
    tokens = tokens_for(alias)
    entry_name = fragment_name(name, samples, vary, source)
    lookup = entries.Lookup(
        alias=alias,
        entry=tokens.key("h", entry_name),
        lock=tokens.key("l", "h:" + entry_name),
        timeout=float(timeout or cache_settings.default_timeout),
        kind="fragment",
        settings=cache_settings,
        make_plan=lambda: _plan(name, samples, tokens),
        store=store,
        label=f"cached fragment {name!r}",
    )
    text: str = entries.get(lookup, render)
    return text


def _plan(name: str, samples: Sequence[Any], tokens: Tokens) -> FragmentPlan | None:
    plans: list[analysis.Plan] = []
    kept: list[Any] = []
    for sample in samples:
        try:
            sql, _params = analysis.query_sql(sample)
        except EmptyResultSet:
            continue  # it can return no rows whatever is written: no dependency
        plan = analysis.plan(sample, sql, tokens)
        if plan is None:
            _warn_once(name, f"what {sample.model._meta.label} reads cannot be known (raw SQL)")
            return None
        plans.append(plan)
        kept.append(sample)
    return FragmentPlan(tokens, kept, plans)
