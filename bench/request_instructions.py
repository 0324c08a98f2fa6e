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
stats counting, ``Server-Timing`` for everyone, slow-request check, the
index advisor explaining queries slower than 100 ms; the fleet recorder's
flush thread off, as it runs outside the request). A second table serves the
demo's article list (60 seeded articles, ``.cache()`` on, SQLite and Redis)
with the index advisor on and off: its production cost is one comparison per
query.

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

from bench import cli  # noqa: E402

N = 2000
#: (path, configuration, requests): the cost per request of perfkit, and of the
#: index advisor in production mode.
CASES = (
    ("/healthz", "bare", N),
    ("/healthz", "perfkit", N),
    ("/articles/", "perfkit", N // 4),
    ("/articles/", "perfkit-indexes-off", N // 4),
)
RESULT = ROOT / "bench" / "results" / "request_instructions.json"
_COLLECTED = re.compile(r"Collected : (\d+)")


def serve(config: str, count: int, path: str = "/healthz") -> float:
    """Serve ``path`` ``count`` times in this process; CPU seconds per request."""
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
        "INDEXES": {"ENABLED": config != "perfkit-indexes-off"},
    }
    import django

    django.setup()
    from django.core.management import call_command
    from django.test import Client

    from django_perfkit.fleet.stats import recorder
    from django_perfkit.redis import get_gateway

    recorder.background = False
    if path != "/healthz":
        call_command("migrate", verbosity=0)
        call_command("seed", articles=60, comments=0, verbosity=0)
    client = Client()
    try:
        for _ in range(50):  # warm: imports, URL resolver, caches
            client.get(path)
        started = time.process_time()
        for _ in range(count):
            response = client.get(path)
        assert response.status_code == 200
        return (time.process_time() - started) / count
    finally:
        # This process's keys (its own prefix): the cached pages, the fleet counts.
        gateway = get_gateway()
        pattern = f"{settings.KEY_PREFIX}*"
        client_ = gateway.client
        for key in client_.scan_iter(match=pattern, count=500):
            client_.delete(key)


#: A fixed hash seed: string hashes decide where dict and set entries land (and
#: how often a lookup collides), so with a random seed per process the same
#: request's count moves from run to run, by thousands of instructions.
_ENV = {"PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0"}


def _callgrind(config: str, count: int, path: str) -> int:
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         __file__, "--serve", config, str(count), path],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, **_ENV},
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{config} x {count} failed: {done.stderr[-1500:]}")
    return int(_COLLECTED.findall(done.stderr)[-1])


def _native(config: str, count: int, path: str) -> float:
    done = subprocess.run(
        [sys.executable, __file__, "--serve", config, str(count), path],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, **_ENV},
        check=True,
    )  # fmt: skip
    return float(done.stdout.strip().splitlines()[-1])


def run() -> dict[str, Any]:
    if shutil.which("valgrind") is None:
        return {"error": "valgrind is not installed"}
    import statistics

    results: dict[str, Any] = {
        "n": N,
        "commit": cli.git_commit(),
        "date": datetime.date.today().isoformat(),
        "python": sys.version.split()[0],
    }
    results["cases"] = []
    for path, config, count in CASES:
        print(f"bench: callgrind {path} {config} ...", file=sys.stderr, flush=True)
        many, few = _callgrind(config, count, path), _callgrind(config, count // 10, path)
        native = statistics.median(_native(config, count, path) for _ in range(5))
        results["cases"].append(
            {
                "path": path,
                "config": config,
                "n": count,
                "instructions": (many - few) / (count - count // 10),
                "native_us": native * 1e6,
            }
        )
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(results, indent=2) + "\n")
    return results


def table(results: dict[str, Any]) -> str:
    if "error" in results:
        return f"Not run: {results['error']}."
    rows = [
        f"Commit {results['commit']}, {results['date']}, Python {results['python']}.",
        "",
        "| path | configuration | requests | instructions per request "
        "| native CPU µs per request (median of 5) |",
        "|---|---|---:|---:|---:|",
    ]
    cases = {(case["path"], case["config"]): case for case in results["cases"]}
    for case in results["cases"]:
        rows.append(
            f"| `{case['path']}` | {case['config']} | {case['n']:,} "
            f"| {case['instructions']:,.0f} | {case['native_us']:.1f} |"
        )
    rows.append("")
    for path, base_name, name, what in (
        ("/healthz", "bare", "perfkit", "perfkit adds"),
        (
            "/articles/",
            "perfkit-indexes-off",
            "perfkit",
            "the index advisor in production mode adds",
        ),
    ):
        base, mine = cases.get((path, base_name)), cases.get((path, name))
        if base is None or mine is None:
            continue
        added = mine["instructions"] - base["instructions"]
        per_us = base["instructions"] / base["native_us"]
        rows.append(
            f"- `{path}`: {what} **{added:,.0f} instructions per request** "
            f"({mine['instructions'] / base['instructions']:.3f}×), about "
            f"**{added / per_us:.1f} µs** at this machine's {per_us:,.0f} instructions per µs "
            "for this program."
        )
    return "\n".join(rows)


def stored_table() -> str | None:
    """The last measured table (for ``make bench``), or None if never measured."""
    return cli.stored_table(RESULT, table)


if __name__ == "__main__":
    if "--serve" in sys.argv:
        at = sys.argv.index("--serve")
        print(serve(sys.argv[at + 1], int(sys.argv[at + 2]), sys.argv[at + 3]))
    else:
        data = run()
        if "--json" in sys.argv:
            print(json.dumps(data))
        else:
            print(table(data))
