"""The demo test suite with and without the pytest plugin, in instructions (callgrind).

The wall-clock comparison of ``bench/query_guard.py`` moves by more than the
plugin's cost between runs on this shared 2-core machine. Instructions do
not: valgrind's callgrind counts every instruction pytest's process executes
(PostgreSQL's and Redis's work is in their own processes, not counted), and
gives the same count for the same run whatever else the machine is doing. So
each configuration of ``pytest tests/test_demo_site.py`` runs once under
``valgrind --tool=callgrind``: the plugin disabled (``-p no:django_perfkit``),
loaded, checking budgets, and with the N+1 guard warning
(``--perfkit-nplusone=warn``), two at a time. The ratio to "disabled" is the
plugin's share of the suite's work. A run is valid only if every test
passed under valgrind (it runs Python about 50 times slower). The index
advisor's EXPLAINs under ``--perfkit-explain`` run in PostgreSQL, which is
not counted here: its cost is in the wall-clock table of the section above.

Run: ``python bench/suite_instructions.py`` (about 20 minutes; ``make
bench-instructions``). It keeps its result in
``bench/results/suite_instructions.json``, which ``make bench`` puts in
docs/benchmarks.md with the commit and date it was measured on: too slow to
run with the rest.
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import cli  # noqa: E402
from bench.cli import git_commit, report  # noqa: E402
from bench.query_guard import SUITE, SUITE_ARGS, suite_configs  # noqa: E402

RESULT = ROOT / "bench" / "results" / "suite_instructions.json"
_COLLECTED = re.compile(r"Collected : (\d+)")
PARALLEL = 2


def _one(name: str, args: list[str]) -> dict[str, Any]:
    print(f"bench: callgrind {name} ...", file=sys.stderr, flush=True)
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, "-m", "pytest", *SUITE_ARGS, "-p", "no:cacheprovider", *args],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    counted = _COLLECTED.findall(done.stderr)
    last = (done.stdout.strip().splitlines() or [""])[-1]
    return {
        "args": args,
        "instructions": int(counted[-1]) if counted else None,
        "passed": done.returncode == 0,
        "summary": last.strip("= "),
    }


def run() -> dict[str, Any]:
    if shutil.which("valgrind") is None:
        return {"error": "valgrind is not installed (apt-get install valgrind)"}
    configs = suite_configs()
    with ThreadPoolExecutor(PARALLEL) as pool:
        futures = {name: pool.submit(_one, name, args) for name, args in configs.items()}
        results = {name: future.result() for name, future in futures.items()}
    version = subprocess.run(["valgrind", "--version"], capture_output=True, text=True)
    data = {
        "suite": SUITE,
        "commit": git_commit(),
        "date": datetime.date.today().isoformat(),
        "valgrind": version.stdout.strip(),
        "python": sys.version.split()[0],
        "configs": results,
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(data, indent=2) + "\n")
    return data


def table(results: dict[str, Any]) -> str:
    if "error" in results:
        return f"Not run: {results['error']}."
    configs = results["configs"]
    base = next(iter(configs.values()))["instructions"]
    lines = [
        f"### `pytest {results['suite']}` under callgrind (commit {results['commit']}, "
        f"{results['date']}, {results['valgrind']}, Python {results['python']})",
        "",
        "| configuration | instructions (millions) | ratio to the plugin disabled | tests |",
        "|---|---:|---:|---|",
    ]
    for name, row in configs.items():
        count = row["instructions"]
        millions = "-" if count is None else f"{count / 1e6:,.0f}"
        ratio = "-" if count is None or not base else f"{count / base:.3f}×"
        tests = row["summary"] if row["passed"] else f"FAILED: {row['summary']}"
        lines.append(f"| {name} | {millions} | {ratio} | {tests} |")
    return "\n".join(lines)


def stored_table() -> str | None:
    """The last measured table (for ``make bench``), or None if never measured."""
    return cli.stored_table(RESULT, table)


if __name__ == "__main__":
    report(run, table)
