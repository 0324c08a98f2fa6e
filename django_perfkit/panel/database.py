"""PostgreSQL activity: what is running, for how long, and who blocks whom.

Read from ``pg_stat_activity`` (client sessions of the configured database
only) and ``pg_blocking_pids``. Shared by the panel's Database page and
``manage.py perfkit_pgactivity``. Query text is shown as its shape (values
replaced by ``?``) unless asked otherwise: literal values in SQL are user data.
"""

from __future__ import annotations

from typing import Any, Literal

from django.db import connections

from django_perfkit.queries.fingerprint import fingerprint

__all__ = ["NotPostgreSQL", "activity", "blocking_chains", "signal_backend"]

_ACTIVITY = """
SELECT pid, usename, application_name, client_addr::text, state, wait_event_type, wait_event,
       EXTRACT(EPOCH FROM (now() - query_start)) AS query_seconds,
       EXTRACT(EPOCH FROM (now() - xact_start)) AS xact_seconds,
       pg_blocking_pids(pid) AS blocked_by, query
FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()
ORDER BY query_start NULLS LAST
"""

#: What each action asks PostgreSQL to do.
SIGNALS: dict[str, str] = {"cancel": "pg_cancel_backend", "terminate": "pg_terminate_backend"}


class NotPostgreSQL(ValueError):
    """The database is not PostgreSQL: there is no pg_stat_activity to read."""


def activity(
    alias: str = "default", min_duration: float = 0.0, show_params: bool = False
) -> list[dict[str, Any]]:
    """The sessions of ``alias``'s database, as dicts (longest-running first).

    Each: ``pid``, ``usename``, ``application_name``, ``client_addr``,
    ``state``, ``wait_event_type``, ``wait_event``, ``query_seconds``,
    ``xact_seconds``, ``blocked_by`` (pids) and ``query``. With
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
        row["query"] = text if show_params else fingerprint(text)
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


def signal_backend(alias: str, action: Literal["cancel", "terminate"], pid: int) -> bool:
    """Cancel ``pid``'s query or end its session; True if PostgreSQL did.

    Only a client session of this database: not another database's, not
    PostgreSQL's own processes (:class:`LookupError` otherwise).
    """
    if not any(row["pid"] == pid for row in activity(alias)):
        raise LookupError(f"no client session {pid} on database {alias!r}")
    with connections[alias].cursor() as cursor:
        cursor.execute(f"SELECT {SIGNALS[action]}(%s)", [pid])
        (done,) = cursor.fetchone()
    return bool(done)
