"""PostgreSQL activity: what is running, for how long, and who blocks whom.

Read from ``pg_stat_activity`` (client sessions of the configured database
only) and ``pg_blocking_pids``. Shared by the panel's Database page and
``manage.py perfkit_pgactivity``. Query text is shown as its shape (values
replaced by ``?``) unless asked otherwise: literal values in SQL are user data.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from django.db import connections

from django_perfkit.queries.fingerprint import fingerprint

__all__ = ["NotPostgreSQL", "activity", "blocking_chains", "hide_values", "signal_backend"]

_ACTIVITY = """
SELECT pid, usename, application_name, client_addr::text, state, wait_event_type, wait_event,
       EXTRACT(EPOCH FROM (now() - query_start)) AS query_seconds,
       EXTRACT(EPOCH FROM (now() - xact_start)) AS xact_seconds,
       pg_blocking_pids(pid) AS blocked_by, query,
       EXTRACT(EPOCH FROM backend_start)::text AS backend_start
FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()
ORDER BY query_start NULLS LAST
"""

#: What each action asks PostgreSQL to do.
SIGNALS: dict[str, str] = {"cancel": "pg_cancel_backend", "terminate": "pg_terminate_backend"}


# What fingerprint() leaves alone, or cannot see closed: escape strings,
# dollar quotes and comments. pg_stat_activity cuts a query at
# track_activity_query_size (1 kB by default), and Django's psycopg backend
# sends values inside the SQL text: a cut can leave a string unclosed.
_E_STRING = re.compile(r"[Ee]'(?:[^'\\]|\\.|'')*'")
_DOLLAR_QUOTED = re.compile(r"\$((?:[A-Za-z_]\w*)?)\$.*?\$\1\$", re.S)
_BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.S)
_LINE_COMMENT = re.compile(r"--[^\n]*")
_LEFT_OVER = re.compile(r"'|\$(?!\d)|/\*")


def hide_values(sql: str) -> str:
    """``sql`` with every value replaced by ``?``; anything after a quote,
    dollar quote or comment left open (a cut query) is dropped, not shown."""
    text = _BLOCK_COMMENT.sub(" ", sql)
    text = _LINE_COMMENT.sub("--", text)
    text = _E_STRING.sub("?", text)
    text = _DOLLAR_QUOTED.sub("?", text)
    text = fingerprint(text)
    left = _LEFT_OVER.search(text)
    if left is not None:
        text = text[: left.start()].rstrip() + " … (cut: the rest may hold values)"
    return text


class NotPostgreSQL(ValueError):
    """The database is not PostgreSQL: there is no pg_stat_activity to read."""


def activity(
    alias: str = "default", min_duration: float = 0.0, show_params: bool = False
) -> list[dict[str, Any]]:
    """The sessions of ``alias``'s database, as dicts (longest-running first).

    Each: ``pid``, ``usename``, ``application_name``, ``client_addr``,
    ``state``, ``wait_event_type``, ``wait_event``, ``query_seconds``,
    ``xact_seconds``, ``blocked_by`` (pids), ``query`` and ``backend_start``
    (the session's start, which tells a pid reused by a new session). With
    ``min_duration``: only queries running, or transactions left idle, at
    least that many seconds.
    """
    connection = connections[alias]
    if connection.vendor != "postgresql":
        raise NotPostgreSQL(
            f"pg_stat_activity is PostgreSQL's: database {alias!r} is "
            f"{connection.vendor}, not PostgreSQL"
        )
    with connection.cursor() as cursor:
        cursor.execute(_ACTIVITY)
        names = [column[0] for column in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    found = []
    for row in rows:
        seconds = float(row["query_seconds"] or 0)
        xact = None if row["xact_seconds"] is None else float(row["xact_seconds"])
        if min_duration:
            # What an on-call engineer looks for: long queries, and sessions
            # holding a transaction (and its locks) open while doing nothing.
            long_query = row["state"] == "active" and seconds >= min_duration
            idle_open = row["state"] == "idle in transaction" and (xact or 0) >= min_duration
            if not (long_query or idle_open):
                continue
        row["query_seconds"] = round(seconds, 3)
        row["xact_seconds"] = None if xact is None else round(xact, 3)
        row["blocked_by"] = list(row["blocked_by"] or [])
        text = row["query"] or ""
        row["query"] = text if show_params else hide_values(text)
        found.append(row)
    found.sort(key=lambda r: -r["query_seconds"])
    return found


def blocking_chains(rows: list[dict[str, Any]]) -> list[list[int]]:
    """Who waits for whom: one chain per blocked session, from it to the session at
    the head (``[waiter, blocker, blocker's blocker, ...]``), longest first.

    A session blocked by several follows the first; a cycle (a deadlock about to
    be broken by PostgreSQL) stops where it repeats.
    """
    blockers = {row["pid"]: row["blocked_by"] for row in rows if row["blocked_by"]}
    chains = []
    for pid in blockers:
        chain = [pid]
        while blockers.get(chain[-1]):
            nxt = blockers[chain[-1]][0]
            if nxt in chain:
                break
            chain.append(nxt)
        chains.append(chain)
    chains.sort(key=lambda c: (-len(c), c))
    return chains


def signal_backend(
    alias: str,
    action: Literal["cancel", "terminate"],
    pid: int,
    backend_start: str | None = None,
) -> bool:
    """Cancel ``pid``'s query or end its session; True if PostgreSQL did.

    Only a client session of this database: not another database's, not
    PostgreSQL's own processes (:class:`LookupError` otherwise). With
    ``backend_start`` (from :func:`activity`), only the session that was
    shown: not another one that got its pid since.
    """
    if not any(
        row["pid"] == pid and backend_start in (None, row["backend_start"])
        for row in activity(alias)
    ):
        raise LookupError(f"no client session {pid} on database {alias!r}")
    with connections[alias].cursor() as cursor:
        cursor.execute(f"SELECT {SIGNALS[action]}(%s)", [pid])
        (done,) = cursor.fetchone()
    return bool(done)
