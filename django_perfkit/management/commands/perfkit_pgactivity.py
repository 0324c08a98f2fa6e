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

from django_perfkit.panel.database import NotPostgreSQL, signal_backend
from django_perfkit.panel.database import activity as _activity


def activity(
    alias: str = "default", min_duration: float = 0.0, show_params: bool = False
) -> list[dict[str, Any]]:
    """:func:`django_perfkit.panel.database.activity`, its errors as ``CommandError``."""
    try:
        return _activity(alias, min_duration, show_params)
    except NotPostgreSQL as error:
        raise CommandError(f"perfkit_pgactivity reads {error}") from None


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
        for action in ("cancel", "terminate"):
            pid = options[action]
            if pid is None:
                continue
            self._signal(alias, action, pid, options)
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

    def _signal(self, alias: str, action: Any, pid: int, options: dict[str, Any]) -> None:
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
        try:
            done = signal_backend(alias, action, pid)
        except LookupError as error:
            raise CommandError(str(error)) from None
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
