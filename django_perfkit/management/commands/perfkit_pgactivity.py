"""``manage.py perfkit_pgactivity``: what PostgreSQL is running, and who blocks whom.

``pg_stat_activity`` for the database (client backends), longest first, with
each query's duration, state, wait event and the pids blocking it
(``pg_blocking_pids``). Query text is shown as its shape (values replaced by
``?``) unless ``--show-params``: literal values in SQL are user data.

``--cancel PID`` / ``--terminate PID`` ask PostgreSQL to cancel the query /
end the session, after confirmation (``--yes`` to skip it, for scripts).
"""

from __future__ import annotations

import json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from django_perfkit.queries.fingerprint import fingerprint

_ACTIVITY = """
SELECT pid, usename, application_name, client_addr::text, state, wait_event_type, wait_event,
       EXTRACT(EPOCH FROM (now() - query_start)) AS query_seconds,
       EXTRACT(EPOCH FROM (now() - xact_start)) AS xact_seconds,
       pg_blocking_pids(pid) AS blocked_by, query
FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()
ORDER BY query_start NULLS LAST
"""


def activity(
    alias: str = "default", min_duration: float = 0.0, show_params: bool = False
) -> list[dict[str, Any]]:
    """The sessions of ``alias``'s database, as dicts (longest-running first)."""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        raise CommandError(
            f"perfkit_pgactivity reads pg_stat_activity: database {alias!r} is "
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


class Command(BaseCommand):
    help = "Show pg_stat_activity with durations, states and blocking pids."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", default="default", help="the database alias")
        parser.add_argument(
            "--min-duration", type=float, default=0.0,
            help="only queries running, or transactions left idle, this many seconds or more",
        )  # fmt: skip
        parser.add_argument("--show-params", action="store_true", help="show literal values")
        parser.add_argument("--json", action="store_true")
        parser.add_argument("--watch", type=float, help="refresh every this many seconds")
        parser.add_argument("--cancel", type=int, metavar="PID", help="cancel PID's query")
        parser.add_argument("--terminate", type=int, metavar="PID", help="end PID's session")
        parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    def handle(self, *args: Any, **options: Any) -> None:
        alias = options["database"]
        if options["cancel"] is not None and options["terminate"] is not None:
            raise CommandError("give --cancel or --terminate, not both")
        for action, function in (
            ("cancel", "pg_cancel_backend"),
            ("terminate", "pg_terminate_backend"),
        ):
            pid = options[action]
            if pid is None:
                continue
            self._signal(alias, action, function, pid, options)
            return
        while True:
            rows = activity(alias, options["min_duration"], options["show_params"])
            if options["json"]:
                self.stdout.write(json.dumps(rows, default=str))
            else:
                self.stdout.write(self.render(rows))
            if not options["watch"]:
                return
            try:
                time.sleep(max(0.2, options["watch"]))
            except KeyboardInterrupt:
                return

    def _signal(
        self, alias: str, action: str, function: str, pid: int, options: dict[str, Any]
    ) -> None:
        target = [
            row for row in activity(alias, show_params=options["show_params"]) if row["pid"] == pid
        ]
        if not target:
            # Only this database's client sessions: not another database's,
            # not PostgreSQL's own processes.
            raise CommandError(f"no client session {pid} on database {alias!r}")
        if not options["yes"]:
            self.stdout.write(self.render(target))
            try:
                answer = input(f"{action} PostgreSQL backend {pid}? [y/N] ")
            except EOFError:
                answer = ""
            if answer.strip().lower() not in ("y", "yes"):
                raise CommandError("not confirmed: nothing done (--yes to skip the question)")
        with connections[alias].cursor() as cursor:
            cursor.execute(f"SELECT {function}(%s)", [pid])
            (done,) = cursor.fetchone()
        self.stdout.write(f"{action} {pid}: {'done' if done else 'no such backend'}")

    @staticmethod
    def render(rows: list[dict[str, Any]]) -> str:
        lines = [f"{'pid':>7} {'state':<20} {'secs':>8} {'wait':<22} {'blocked by':<12} query"]
        for r in rows:
            wait = f"{r['wait_event_type'] or ''}:{r['wait_event'] or ''}".strip(":")
            blocked = ",".join(str(p) for p in r["blocked_by"]) or "-"
            query = " ".join(str(r["query"]).split())[:120]
            lines.append(
                f"{r['pid']:>7} {str(r['state']):<20} {r['query_seconds']:>8.2f} {wait:<22} "
                f"{blocked:<12} {query}"
            )
        if not rows:
            lines.append("(no sessions match)")
        return "\n".join(lines)
