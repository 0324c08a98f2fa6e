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

* a ``save()``: statements on the model's table touching that row only (its
  primary key), or one insert when the instance is new;
* a ``delete()``: ``DELETE ... WHERE pk IN (...)`` of the announced rows;
* an ``m2m_changed`` action: any statement on the through table.

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
from typing import Any, NamedTuple

__all__ = ["Announcement", "announce", "covered", "sender_frame", "withdraw"]


class Announcement(NamedTuple):
    """A write a signal said is coming."""

    table: str
    #: The frame that sent the ``pre_*`` signal; the announcement dies with it.
    frame: FrameType | None
    #: Value-token keys of the announced rows' primary keys; ``None``: any
    #: statement on the table (an ``m2m_changed`` action on a through table).
    pk_keys: frozenset[str] | None
    #: A new instance: one ``INSERT`` without a primary key value is covered.
    insert: bool
    #: ``id()`` of the instance (or manager call) that announced it.
    owner: int
    #: What the receiver wants back at ``post_*`` (the old mapping of a save).
    payload: Any = None


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
    # Dropping dead announcements here keeps the tuple short whatever failed.
    _current.set((*_alive(_current.get()), announcement))


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


def covered(base: str, keys: list[str], pk_column: Any) -> set[str]:
    """Tables whose ``w:`` key a statement with these ``keys`` leaves out.

    ``pk_column(table)``: the table's primary-key column (None if not a model
    table). Costs one context-variable read when nothing is announced.
    """
    announcements = _current.get()
    if not announcements:
        return set()
    announcements = _alive(announcements)
    if not announcements:
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
        mine = [a for a in announcements if a.table == table]
        if not mine:
            continue
        if any(a.pk_keys is None for a in mine):
            result.add(table)  # an m2m action: any statement on its through table
            continue
        if "t" in table_keys:
            continue  # a write perfkit cannot attribute to rows
        column = pk_column(table)
        if column is None:
            continue
        prefix = f"{base}f:{table}:{column}:"
        rows = [k for k in table_keys if k.startswith(prefix)]
        if rows:
            announced = set().union(*(a.pk_keys or () for a in mine))
            if all(row in announced for row in rows):
                result.add(table)
        elif any(a.insert for a in mine):
            result.add(table)
    return result
