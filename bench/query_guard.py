"""Query guard side by side: perfkit's N+1 detection, nplusone and django-zeal.

**Detection**: a corpus of 26 scenarios (``bench/guardapp/scenarios.py``,
after the research corpus) on 5 publishers, 5 authors with a profile, 10
books with 2 tags each and 5 generic comments, in in-memory SQLite. 17
positives run a query per row of an outer loop (forward and reverse
relations, deferred fields, ``count()``/``exists()``/``first()``/``get()``/
``filter()``/``values_list()``/``aggregate()`` per row, raw SQL, a second hop
after ``select_related``, a generic foreign key, per-instance
``prefetch_related_objects``, a template loop); 6 negatives have nothing to
fix (one ``get()`` or ``first()`` then its FK, one FK on ``list(...)[0]``,
relations covered by ``select_related``/``prefetch_related``, a null FK); 3
borderline cases repeat a query without reading row by row (two ``get()``
calls on two lines or through one helper, five ``create()`` calls) and are
shown, not scored. Each tool runs every scenario once, in a process (and, for
nplusone 1.0.0 and zeal, a virtualenv on Django 5.2) of its own, with its
defaults: perfkit ``with capture() as report`` and ``report.nplusone``,
nplusone's ``Profiler()`` (which raises ``NPlusOneError``; its "unnecessary
eager load" messages do not count as N+1 findings), ``zeal_context()`` with
``ZEAL_RAISE`` (threshold 2 per call site). A crash counts as not flagged.
perfkit's suggested fix is shown without the "(built at file:line)" that
names the queryset to change.

**Overhead**: CPU µs (the process's own CPU time) per query of
``list(Book.objects.filter(pk=k))`` repeated 2,000 times, with no record
open, inside ``record_request()`` (perfkit's query collector only) and inside
``capture()`` (collector and N+1 detection); the configurations take turns
round by round (15 rounds) and the medians are shown; the competitors' own
guards are timed the same way in their virtualenvs, against their own
baseline.

**Test suite** (only with ``BENCH_GUARD_SUITE_RUNS=N``: off in ``make bench``,
since on this machine the wall clock moves between runs by as much as the
plugin's cost; the callgrind section below counts it in instructions
instead): the demo site's tests (``pytest tests/test_demo_site.py``,
PostgreSQL and Redis on loopback) with the pytest plugin disabled
(``-p no:django_perfkit``), loaded, checking budgets, with the N+1 guard
warning (``--perfkit-nplusone=warn``) and with the index advisor explaining
every query shape (``--perfkit-explain=report``): median
wall time of interleaved runs, process start included, the CPU time of
pytest's process (user and system; less disturbed by other work on the
machine than the wall time) and pytest's own time. Every configuration
runs with ``-o addopts=-ra`` (the project's ``--strict-markers`` off):
without the plugin its markers are unknown.

Run: ``python bench/query_guard.py`` (``make bench`` runs it and rewrites
docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import venvs  # noqa: E402
from bench.cli import report  # noqa: E402

WORKER = ROOT / "bench" / "guard_corpus.py"
COMPETITORS = {
    # nplusone 1.0.0 crashes on Django 6.1 (any select_related); both on 5.2.
    "nplusone": ["nplusone==1.0.0", "Django>=5.2,<5.3"],
    "zeal": ["django-zeal>=2.3,<3", "Django>=5.2,<5.3"],
}
TOOLS = ["perfkit", "nplusone", "zeal"]
SUITE = "tests/test_demo_site.py"
SUITE_RUNS = int(os.environ.get("BENCH_GUARD_SUITE_RUNS", "0"))


def python_for(tool: str) -> str:
    return venvs.python_for(tool, COMPETITORS.get(tool))


def worker(tool: str, mode: str) -> dict[str, Any]:
    out = subprocess.run(
        [python_for(tool), str(WORKER), tool, mode],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def suite_configs() -> dict[str, list[str]]:
    configs = {
        "plugin disabled (`-p no:django_perfkit`)": ["-p", "no:django_perfkit"],
        "plugin loaded": [],
        "`--perfkit-budgets=perf-budgets.json`": ["--perfkit-budgets=perf-budgets.json"],
    }
    helptext = subprocess.run(
        [sys.executable, "-m", "pytest", "--help"], capture_output=True, text=True, cwd=ROOT
    ).stdout
    if "--perfkit-nplusone" in helptext:
        configs["`--perfkit-nplusone=warn`"] = ["--perfkit-nplusone=warn"]
    if "--perfkit-explain" in helptext:
        # The index advisor explains every query shape of the run (once each).
        configs["`--perfkit-explain=report`"] = ["--perfkit-explain=report"]
    return configs


#: Without the plugin its markers (``nplusone_expected``) are unknown, and the
#: project's ``--strict-markers`` would stop collection: every configuration
#: runs with the project's other option only.
SUITE_ARGS = [SUITE, "-q", "-p", "no:randomly", "-o", "addopts=-ra"]
_PYTEST_SECONDS = re.compile(r" in ([0-9.]+)s")


def suite() -> dict[str, Any]:
    configs = suite_configs()
    names = list(configs)
    times: dict[str, list[float]] = {name: [] for name in names}
    own: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    failures: dict[str, list[str]] = {name: [] for name in names}
    for r in range(SUITE_RUNS):
        # Run by run the configurations take turns going first.
        for name in names[r % len(names) :] + names[: r % len(names)]:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-m", "pytest", *SUITE_ARGS, *configs[name]],
                capture_output=True, text=True, cwd=ROOT,
            )  # fmt: skip
            times[name].append(time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[name].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            last = (out.stdout.strip().splitlines() or [""])[-1]
            seconds = _PYTEST_SECONDS.search(last)
            if seconds:
                own[name].append(float(seconds.group(1)))
            if out.returncode != 0:
                failed = [
                    ln for ln in out.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))
                ]
                failures[name].append("; ".join(failed) or last.strip("= "))
    return {
        "runs": SUITE_RUNS,
        "args": SUITE_ARGS,
        "configs": {
            name: {
                "args": configs[name],
                "median_s": statistics.median(times[name]),
                "cpu_s": statistics.median(cpu[name]),
                "pytest_s": statistics.median(own[name]) if own[name] else None,
                "times": times[name],
                "failures": failures[name],
            }
            for name in names
        },
    }


def run() -> dict[str, Any]:
    corpus = {}
    for tool in TOOLS:
        print(f"bench: {tool} over the N+1 corpus ...", file=sys.stderr, flush=True)
        corpus[tool] = worker(tool, "corpus")
    overhead = {}
    for tool in TOOLS:
        print(f"bench: {tool} overhead ...", file=sys.stderr, flush=True)
        overhead[tool] = worker(tool, "overhead")
    if not SUITE_RUNS:
        return {"corpus": corpus, "overhead": overhead, "suite": None}
    print(f"bench: {SUITE} x {SUITE_RUNS} per configuration ...", file=sys.stderr, flush=True)
    return {"corpus": corpus, "overhead": overhead, "suite": suite()}


def _label(tool: str, data: dict[str, Any]) -> str:
    version = data.get("versions", {}).get(tool)
    if tool == "perfkit" or not version:
        return tool
    return f"{tool} {version}"


_BUILT_AT = re.compile(r" \(built at [^)]*\)")


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "?"
    if entry.get("error"):
        return "crash"
    return "✓" if entry["flagged"] else "·"


def _suggestion(entry: dict[str, Any] | None) -> str:
    if not entry or not entry.get("findings"):
        return ""
    # Without the "(built at file:line in function)" that names the queryset.
    texts = dict.fromkeys(
        _BUILT_AT.sub("", f["suggestion"]) for f in entry["findings"] if f["suggestion"]
    )
    return "; ".join(texts).replace("|", "\\|").replace("\n", " ")


def detection_table(corpus: dict[str, Any]) -> list[str]:
    groups: dict[str, list[str]] = next(
        (d["result"]["groups"] for d in corpus.values() if "result" in d), {}
    )
    scenarios = {
        tool: data["result"]["scenarios"] if "result" in data else {}
        for tool, data in corpus.items()
    }
    labels = [_label(tool, corpus[tool]) for tool in TOOLS]
    lines = [
        "### N+1 detection (✓ flagged, · not flagged)",
        "",
        "| scenario | " + " | ".join(labels) + " | perfkit's suggested fix |",
        "|---|" + "---|" * len(TOOLS) + "---|",
    ]

    def rows(group: str) -> None:
        for name in groups.get(group, []):
            cells = [_cell(scenarios[tool].get(name)) for tool in TOOLS]
            fix = _suggestion(scenarios["perfkit"].get(name)) if group == "positive" else ""
            lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {fix} |")

    def score(group: str, title: str) -> None:
        names = groups.get(group, [])
        counts = [
            sum(bool(scenarios[tool].get(n, {}).get("flagged")) for n in names) for tool in TOOLS
        ]
        cells = [f"**{c} / {len(names)}**" for c in counts]
        lines.append(f"| **{title}** | " + " | ".join(cells) + " | |")

    rows("positive")
    score("positive", "recall (positives caught)")
    rows("negative")
    score("negative", "false positives (negatives flagged)")
    rows("borderline")
    lines.append("")
    notes = []
    for tool in TOOLS:
        if "error" in corpus[tool]:
            notes.append(f"- {_label(tool, corpus[tool])} did not run: `{corpus[tool]['error']}`")
            continue
        errors: dict[str, list[str]] = {}
        for name, entry in scenarios[tool].items():
            if entry.get("error"):
                errors.setdefault(entry["error"], []).append(name)
        for error, names in errors.items():
            which = "every scenario" if len(names) == len(scenarios[tool]) else ", ".join(names)
            notes.append(f"- {_label(tool, corpus[tool])} crashed on {which}: `{error}`")
    perfkit = scenarios.get("perfkit", {})
    wrong = [
        (name, entry)
        for name, entry in perfkit.items()
        if entry.get("flagged") and name not in groups.get("positive", [])
    ]
    for name, entry in wrong:
        notes.append(f"- perfkit on `{name}`: " + " / ".join(entry["messages"]))
    if notes:
        lines += ["Notes:", "", *notes, ""]
    return lines


def _us(value: float | None) -> str:
    return "" if value is None else f"{value:,.1f}"


def overhead_table(overhead: dict[str, Any], suite: dict[str, Any] | None) -> list[str]:
    lines = [
        "### Overhead per query (median CPU µs of `list(Book.objects.filter(pk=k))`, SQLite)",
        "",
        "| tool | no detector | collector only | detector on | detector's cost per query "
        "| of which N+1 detection |",
        "|---|---|---|---|---|---|",
    ]
    for tool in TOOLS:
        data = overhead.get(tool, {})
        if "result" not in data:
            lines.append(f"| {tool} | did not run: `{data.get('error', '')}` | | | | |")
            continue
        us = data["result"]["us_per_query"]
        cost = us["guard"] - us["none"]
        detection = us["guard"] - us.get("collector", us["none"])
        lines.append(
            f"| {_label(tool, data)} | {_us(us['none'])} | {_us(us.get('collector'))} "
            f"| {_us(us['guard'])} | {cost:+,.1f} µs ({us['guard'] / us['none'] - 1:+.1%}) "
            f"| {detection:+,.1f} µs |"
        )
    if suite is None:
        return [
            "",
            f"`pytest {SUITE}` by the wall clock: not run (`BENCH_GUARD_SUITE_RUNS=3` runs it); "
            "the plugin's cost on the suite is counted in instructions in the next section.",
        ]
    configs = suite["configs"]
    base = next(iter(configs.values()))
    lines += [
        "",
        f"### `pytest {SUITE}` (median seconds of {suite['runs']} interleaved runs)",
        "",
        "| configuration | wall | ratio to the plugin disabled | CPU (pytest's process) "
        "| ratio | pytest's own time | failed runs |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for name, row in configs.items():
        own = "" if row["pytest_s"] is None else f"{row['pytest_s']:.2f}"
        lines.append(
            f"| {name} | {row['median_s']:.2f} | {row['median_s'] / base['median_s']:.2f}× "
            f"| {row['cpu_s']:.2f} | {row['cpu_s'] / base['cpu_s']:.2f}× | {own} "
            f"| {len(row['failures'])} of {suite['runs']} |"
        )
        notes += [f"- {name}: `{failure}`" for failure in dict.fromkeys(row["failures"])]
    if notes:
        lines += ["", "Failed runs:", "", *notes]
    return lines


def table(results: dict[str, Any]) -> str:
    lines = detection_table(results["corpus"])
    lines += overhead_table(results["overhead"], results["suite"])
    return "\n".join(lines)


if __name__ == "__main__":
    report(run, table)
