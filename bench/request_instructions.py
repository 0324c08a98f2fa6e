"""perfkit's cost per request in instructions: the whole Django stack, in-process.

Requests per second under gunicorn (``bench/requests.py``) carry this
machine's noise: bare Django's own CPU per request moved by ~200 µs between
rounds, more than the middleware's cost. Here the same requests run through
Django's WSGI handler (every middleware of the demo site, the URL resolver,
the view) in one process under ``valgrind --tool=callgrind``, which counts
instructions the same way on every run. Each configuration serves ``/healthz``
(a view that does nothing) ``N`` and ``N/10`` times; the difference divided
by ``0.9 N`` is the instructions of one request, start-up excluded. The
added instructions are turned into microseconds with this machine's
instructions per µs for the same program run natively (its median CPU time
per request over the same count): an estimate, labelled as one.

Configurations: the demo's middleware without ``PerfkitMiddleware`` (bare),
and with it in its production defaults (query guard in ``log`` mode, fleet
stats counting, ``Server-Timing`` for everyone, slow-request check; the fleet
recorder's flush thread off, as it runs outside the request).

Run: ``python bench/request_instructions.py`` (a few minutes; ``make
bench-instructions``). It keeps its result in
``bench/results/request_instructions.json``, which ``make bench`` puts in
docs/benchmarks.md with the commit and date it was measured on.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

N = 2000
CONFIGS = ("bare", "perfkit")
RESULT = ROOT / "bench" / "results" / "request_instructions.json"
_COLLECTED = re.compile(r"Collected : (\d+)")


def serve(config: str, count: int) -> float:
    """Serve ``/healthz`` ``count`` times in this process; CPU seconds per request."""
    import time

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    os.environ["PERFKIT_TEST_DB"] = "sqlite"
    from django.conf import settings

    if config == "bare":
        settings.MIDDLEWARE = [
            m for m in settings.MIDDLEWARE if m != "django_perfkit.middleware.PerfkitMiddleware"
        ]
    settings.PERFKIT = {
        **settings.PERFKIT,
        "FLEET": {"ENABLED": True},
        "QUERY_GUARD": {"MODE": "log"},
        "SERVER_TIMING": "all",
    }
    import django

    django.setup()
    from django.test import Client

    from django_perfkit.fleet.stats import recorder

    recorder.background = False
    client = Client()
    for _ in range(50):  # warm: imports, URL resolver, caches
        client.get("/healthz")
    started = time.process_time()
    for _ in range(count):
        response = client.get("/healthz")
    assert response.status_code == 200
    return (time.process_time() - started) / count


def _callgrind(config: str, count: int) -> int:
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         __file__, "--serve", config, str(count)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{config} x {count} failed: {done.stderr[-1500:]}")
    return int(_COLLECTED.findall(done.stderr)[-1])


def _native(config: str) -> float:
    done = subprocess.run(
        [sys.executable, __file__, "--serve", config, str(N)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
    )  # fmt: skip
    return float(done.stdout.strip().splitlines()[-1])


def run() -> dict[str, Any]:
    if shutil.which("valgrind") is None:
        return {"error": "valgrind is not installed"}
    import statistics

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    results: dict[str, Any] = {
        "n": N,
        "commit": commit or "unknown",
        "date": datetime.date.today().isoformat(),
        "python": sys.version.split()[0],
        "configs": {},
    }
    for config in CONFIGS:
        print(f"bench: callgrind {config} ...", file=sys.stderr, flush=True)
        many, few = _callgrind(config, N), _callgrind(config, N // 10)
        native = statistics.median(_native(config) for _ in range(5))
        results["configs"][config] = {
            "instructions": (many - few) / (N - N // 10),
            "native_us": native * 1e6,
        }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(results, indent=2) + "\n")
    return results


def table(results: dict[str, Any]) -> str:
    if "error" in results:
        return f"Not run: {results['error']}."
    bare = results["configs"]["bare"]
    rows = [
        f"### `/healthz` through Django's WSGI handler, in-process ({results['n']:,} requests; "
        f"commit {results['commit']}, {results['date']}, Python {results['python']})",
        "",
        "| configuration | instructions per request | native CPU µs per request (median of 5) |",
        "|---|---:|---:|",
    ]
    for name, row in results["configs"].items():
        rows.append(f"| {name} | {row['instructions']:,.0f} | {row['native_us']:.1f} |")
    mine = results["configs"]["perfkit"]
    added = mine["instructions"] - bare["instructions"]
    per_us = bare["instructions"] / bare["native_us"]
    rows += [
        "",
        f"perfkit adds **{added:,.0f} instructions per request** "
        f"({mine['instructions'] / bare['instructions']:.2f}× bare), about "
        f"**{added / per_us:.1f} µs** at this machine's {per_us:,.0f} instructions per µs "
        f"for this program (target: at most 50 µs).",
    ]
    return "\n".join(rows)


def stored_table() -> str | None:
    """The last measured table (for ``make bench``), or None if never measured."""
    if not RESULT.exists():
        return None
    return table(json.loads(RESULT.read_text()))


if __name__ == "__main__":
    if "--serve" in sys.argv:
        at = sys.argv.index("--serve")
        print(serve(sys.argv[at + 1], int(sys.argv[at + 2])))
    else:
        data = run()
        if "--json" in sys.argv:
            print(json.dumps(data))
        else:
            print(table(data))
