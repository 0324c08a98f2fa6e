"""Rendered fragments, cached until what they show changes.

``.cache()`` saves the queries of a page, not its rendering; on a list page,
rendering twenty rows can cost more than the queries did. A fragment entry
stores the rendered text and goes through the same protocol as every other
entry (:mod:`.entries`): one round trip on a hit, single flight and early
refresh on a miss, and a result refused when a write raced it.

What a fragment depends on is what its body read while it rendered:

* values from other entries (a ``.cache()`` queryset, a ``@cached_on_write``
  function): their own tokens, with the values they were valid under when
  read (``entries.depending``), as fine-grained as those entries are;
* rows read by SQL: every write to their tables (the tables' scan tokens,
  captured before the body ran).

The querysets given to the fragment name it and say which tables its body may
read by SQL; a read of any other table keeps the text from being stored, with
a warning naming the table.

Why the querysets must reach the fragment unevaluated: an entry is correct
because its tokens are captured, or its inner entries read, *before* the data
it holds is used; rows read before the fragment began were read before any of
that, and a write in between would go unnoticed. A fragment given an
evaluated queryset is rendered but not stored. Data that reaches the body
some other way (a model instance the view loaded) is not seen at all: it
must not be shown in a cached fragment (see docs/cache.md).

Used through the ``{% cached_as %}`` template tag
(:mod:`django_perfkit.templatetags.perfkit_cache`) or :func:`cached_fragment`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import EmptyResultSet
from django.db import connections, models
from django.utils import translation

from django_perfkit.cache import analysis, entries
from django_perfkit.conf import get_settings
from django_perfkit.versions.tokens import Tokens, ready_for_reads, tokens_for
from django_perfkit.versions.writes import dirty_tables

__all__ = [
    "FragmentPlan",
    "cached_fragment",
    "check_arguments",
    "fragment_name",
    "render_cached",
]


class FragmentPlan(analysis.Plan):
    """What a fragment captures before its body runs: the coarse tokens of every
    table its querysets read.

    Recorded: the epoch and each table's ``t:`` token always; a table's scan
    token (``s:``, moved by every write to it) when the body read the table
    by SQL. What the body got from other entries (a ``.cache()`` hit, a cached
    function) is recorded as those entries' own tokens, with the values they
    were valid under (``entries.depending``), which is as fine-grained as
    those entries are.
    """

    __slots__ = ()

    def __init__(self, tokens: Tokens, tables: set[str]) -> None:
        static = [tokens.epoch]
        always = {tokens.epoch}
        for table in sorted(tables):
            static += [tokens.table(table), tokens.scan(table)]
            always.add(tokens.table(table))
        super().__init__(tokens=tokens, base="", tables=set(tables), static=static, always=always)

    def flags(
        self, result_kind: str, rows: Any, read: set[str] | None = None
    ) -> tuple[str, list[str]]:
        scans = {self.tokens.scan(table) for table in read or ()}
        return "".join(
            "1" if key in self.always or key in scans else "0" for key in self.static
        ), []


def fragment_name(
    name: str, samples: Sequence[Any], vary: Any, source: str = "", language: str | None = None
) -> str:
    """A hash naming the entry: the name, each sample's query, ``vary``, the body's
    source and the active language.

    Raises ``ValueError`` when ``vary`` cannot be pickled.
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{name}|{source}|{language}|".encode())
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


def check_arguments(name: Any, samples: Sequence[Any], timeout: Any, vary: Any = None) -> None:
    """Raise ``TypeError`` or ``ValueError``, naming the fix, for arguments
    :func:`cached_fragment` cannot cache under (the template tag checks first,
    so that a bad value never fails a page in production)."""
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
    aliases = {sample.db for sample in samples}
    if len(aliases) != 1:
        raise ValueError(
            f"cached fragment {name!r}: its querysets use databases {sorted(aliases)}; "
            "cache one fragment per database"
        )
    if vary is not None and analysis.call_state(vary) is None:
        raise ValueError(
            f"cached fragment {name!r}: vary={vary!r} cannot be pickled; "
            "give plain values (strings, numbers, tuples of them)"
        )


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
    """The text ``render()`` returns, from Redis until what ``render()`` read changes.

    ``samples``: the querysets whose rows the text shows, unevaluated (``render``
    evaluates them); they name the entry and the tables it may read by SQL.
    ``vary``: a plain, picklable value the text also depends on (the user's
    pk); the active language is added when ``USE_I18N`` is on. ``timeout``:
    seconds (default ``PERFKIT["CACHE"]["DEFAULT_TIMEOUT"]``). ``source``: the
    body's own text, so that editing it changes the entry.
    """
    check_arguments(name, samples, timeout, vary)
    return render_cached(name, samples, render, timeout=timeout, vary=vary, source=source)


def render_cached(
    name: str,
    samples: Sequence[models.QuerySet[Any]],
    render: Callable[[], str],
    *,
    timeout: float | None = None,
    vary: Any = None,
    source: str = "",
) -> str:
    """:func:`cached_fragment` for arguments :func:`check_arguments` accepted."""
    settings = get_settings()
    cache_settings = settings.cache
    if not settings.enabled or not cache_settings.enabled:
        return render()
    alias = samples[0].db
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
    # The language is part of the name: a translated body renders differently
    # under each, and forgetting it in ``vary`` would serve one to everyone.
    language = translation.get_language() if django_settings.USE_I18N else None
    entry_name = fragment_name(name, samples, vary, source, language)
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
    tables: set[str] = set()
    for sample in samples:
        try:
            sql, _params = analysis.query_sql(sample)
        except EmptyResultSet:
            continue  # it can return no rows whatever is written: no dependency
        plan = analysis.plan(sample, sql, tokens)
        if plan is None:
            _warn_once(name, f"what {sample.model._meta.label} reads cannot be known (raw SQL)")
            return None
        tables |= plan.tables
    return FragmentPlan(tokens, tables)
