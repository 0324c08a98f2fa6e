"""``manage.py perfkit_top``: what every app server is serving, like ``top``.

Routes across the fleet (every live server's counts in Redis, added up)
over the last ``--minutes``: requests per second, p50 / p95 / p99 latency,
errors, mean queries, rate-limited requests. Refreshes every ``--interval``
seconds until Ctrl-C; ``--once`` prints one table (for scripts), ``--json``
one JSON object.
"""

from __future__ import annotations

import json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_perfkit.fleet.stats import fleet_snapshot

_SORTS = {
    "requests": lambda r: -r["requests"],
    "p95": lambda r: -(r["p95_ms"] or 0),
    "errors": lambda r: -r["errors"],
    "queries": lambda r: -(r["mean_queries"] or 0),
}


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return ">10s" if value == float("inf") else f"{value:g}"


def render(snapshot: dict[str, Any], sort: str, limit: int) -> str:
    servers = snapshot["servers"]
    rows = sorted(snapshot["routes"], key=_SORTS[sort])[:limit]
    total = sum(r["requests"] for r in snapshot["routes"])
    minutes = snapshot["minutes"]
    lines = [
        f"perfkit top: {len(servers)} server(s), {total} requests in {minutes} min "
        f"({total / (minutes * 60):.2f}/s)",
        "  " + ", ".join(sorted(servers)) if servers else "  (no live server: nothing flushed)",
        "",
        f"{'route':<40} {'req/s':>8} {'requests':>9} {'p50':>6} {'p95':>6} {'p99':>6} "
        f"{'errors':>6} {'queries':>7} {'limited':>7}",
    ]
    for r in rows:
        route = r["route"] if len(r["route"]) <= 40 else r["route"][:37] + "..."
        queries = "-" if r["mean_queries"] is None else f"{r['mean_queries']:.1f}"
        lines.append(
            f"{route:<40} {r['rps']:>8.2f} {r['requests']:>9} {_ms(r['p50_ms']):>6} "
            f"{_ms(r['p95_ms']):>6} {_ms(r['p99_ms']):>6} {r['errors']:>6} {queries:>7} "
            f"{r['ratelimited']:>7}"
        )
    lines.append("(latency in ms, upper edge of its histogram bucket)")
    return "\n".join(lines)


class Command(BaseCommand):
    help = "Show what every app server is serving, per route (fleet stats in Redis)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--minutes", type=int, default=5, help="window (default 5)")
        parser.add_argument("--server", help="only this server (host:pid)")
        parser.add_argument("--sort", choices=sorted(_SORTS), default="requests")
        parser.add_argument("--limit", type=int, default=30, help="rows shown (default 30)")
        parser.add_argument("--once", action="store_true", help="print once and exit")
        parser.add_argument("--json", action="store_true", help="one JSON object, then exit")
        parser.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")

    def handle(self, *args: Any, **options: Any) -> None:
        minutes = options["minutes"]
        if minutes < 1:
            raise CommandError("--minutes must be at least 1")
        if options["json"]:
            snapshot = fleet_snapshot(minutes, options["server"])
            self.stdout.write(json.dumps(snapshot, default=str))
            return
        while True:
            text = render(
                fleet_snapshot(minutes, options["server"]), options["sort"], options["limit"]
            )
            if options["once"]:
                self.stdout.write(text)
                return
            self.stdout.write("\x1b[2J\x1b[H" + text)  # clear the screen, like top
            try:
                time.sleep(max(0.2, options["interval"]))
            except KeyboardInterrupt:
                return
