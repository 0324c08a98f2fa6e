"""Announced writes: the ones a model signal told cache on write about.

Cache on write keeps an entry fresh by recomputing it when a ``post_save``,
``post_delete`` or ``m2m_changed`` signal says its data changed. A write that
sends no signal (``QuerySet.update()``, ``bulk_create``, raw SQL, another
process without the receivers) cannot be handled that way, so it bumps the
table's ``w:<table>`` token, which every on-write entry reading the table
depends on: those entries stop matching and the next read recomputes.

Every write bumps ``w:<table>`` (the watcher puts it in each statement's keys)
unless it was announced: the receivers of ``pre_save``, ``pre_delete`` and the
``pre_*`` actions of ``m2m_changed`` announce the write that follows, and
the watcher leaves out the ``w:`` key of a statement the announcement covers:

* a ``save()`` of a stored row: statements on the model's table touching
  that row only (its primary key);
* a ``save()`` of a new instance: one ``INSERT`` (of that primary key, when
  it is known);
* an ``m2m_changed`` action: one write statement on the through table.

Deletes are not announced: ``delete()`` maps the instance as the caller holds
it, which may be older than the row, so every delete also invalidates.

An announcement ends at the matching ``post_*`` signal. One whose operation
failed in between (a ``ValueError`` before the ``INSERT``, a ``pre_save``
receiver that raised) is never withdrawn, so it is also bound to the frame
that sent the signal (``Model.save_base``, ``Collector.delete``, the related
manager's method): once that frame has returned, the announcement covers
nothing. Erring the other way only costs a recompute on read; erring this way
would serve stale values, so every doubt bumps.
"""

from __future__ import annotations

import sys
from contextvars import ContextVar
from types import FrameType
from typing import Any

__all__ = ["Announcement", "announce", "covered", "sender_frame", "withdraw"]


class Announcement:
    """A write a signal said is coming."""

    __slots__ = ("frame", "kind", "owner", "payload", "pk_keys", "spent", "table")

    def __init__(
        self,
        table: str,
        frame: FrameType | None,
        kind: str,
        owner: int,
        pk_keys: frozenset[str] = frozenset(),
        payload: Any = None,
    ) -> None:
        self.table = table
        #: The frame that sent the ``pre_*`` signal; the announcement dies with it.
        self.frame = frame
        #: "update": a save of a stored row (statements on its primary key);
        #: "insert": a save of a new instance (one INSERT); "m2m": an
        #: ``m2m_changed`` action (one write to the through table).
        self.kind = kind
        #: ``id()`` of the instance that announced it.
        self.owner = owner
        #: Value-token keys of the row's primary key (empty: not known yet).
        self.pk_keys = pk_keys
        #: What the receiver wants back at ``post_*`` (the old mapping of a save).
        self.payload = payload
        #: An "insert" or "m2m" announcement covers one statement, then none.
        self.spent = False


_current: ContextVar[tuple[Announcement, ...]] = ContextVar("perfkit_announced", default=())


def sender_frame() -> FrameType | None:
    """The frame that sent the signal the caller (a receiver) is handling."""
    from django.dispatch.dispatcher import Signal

    send = Signal.send.__code__
    frame = sys._getframe(1)
    for _ in range(12):
        if frame.f_code is send:
            return frame.f_back
        if frame.f_back is None:
            break
        frame = frame.f_back
    return None  # not found: the announcement then covers nothing (bumps)


def _alive(announcements: tuple[Announcement, ...]) -> tuple[Announcement, ...]:
    frames = {a.frame for a in announcements}
    live: set[Any] = set()
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and len(live) < len(frames):
        if frame in frames:
            live.add(frame)
        frame = frame.f_back
    return tuple(a for a in announcements if a.frame in live)


def announce(announcement: Announcement) -> None:
    current = _current.get()
    if current and current[-1].frame is not announcement.frame:
        # A new operation: drop the dead announcements (a save that raised
        # before its post_save) instead of keeping their frames alive.
        current = _alive(current)
    _current.set((*current, announcement))


def withdraw(table: str, owner: int) -> Announcement | None:
    """End the announcement ``owner`` made on ``table``; returns it (None if gone)."""
    found = None
    kept = []
    for announcement in _current.get():
        if found is None and announcement.table == table and announcement.owner == owner:
            found = announcement
        else:
            kept.append(announcement)
    if found is not None:
        _current.set(tuple(kept))
    return found


def covered(base: str, keys: list[str], pk_column: Any, insert: bool) -> set[str]:
    """Tables whose ``w:`` key a statement with these ``keys`` leaves out.

    ``pk_column(table)``: the table's primary-key column (None if not a model
    table); ``insert``: the statement is an ``INSERT``. Costs one
    context-variable read when nothing is announced.
    """
    announcements = _current.get()
    if not announcements:
        return set()
    live = _alive(announcements)
    if len(live) != len(announcements):
        _current.set(live)
    if not live:
        return set()
    cut = len(base)
    written: dict[str, list[str]] = {}
    for key in keys:
        kind, _, rest = key[cut:].partition(":")
        if kind in ("w", "g"):
            continue
        table = rest.split(":", 1)[0]
        written.setdefault(table, []).append(key if kind == "f" else kind)
    result: set[str] = set()
    for table, table_keys in written.items():
        mine = [a for a in live if a.table == table and not a.spent]
        if not mine:
            continue
        m2m = [a for a in mine if a.kind == "m2m"]
        if m2m:
            # The related manager's one statement on its through table.
            m2m[0].spent = True
            result.add(table)
            continue
        if "t" in table_keys:
            continue  # a write perfkit cannot attribute to rows
        column = pk_column(table)
        if column is None:
            continue
        prefix = f"{base}f:{table}:{column}:"
        rows = {k for k in table_keys if k.startswith(prefix)}
        updates = [a for a in mine if a.kind == "update"]
        if rows and updates and rows <= set().union(*(a.pk_keys for a in updates)):
            # The stored row's UPDATE (or, if it was gone, its INSERT).
            result.add(table)
            continue
        if insert:
            for a in mine:
                if a.kind == "insert" and (rows == a.pk_keys if rows else not a.pk_keys):
                    a.spent = True  # a save inserts one row, once
                    result.add(table)
                    break
    return result
