"""One N+1 detector over the corpus (``bench/guardapp``), in whatever virtualenv runs this file.

Run by ``bench/query_guard.py``, never imported by it: nplusone and zeal patch
Django, so each runs in a process (and virtualenv) of its own. Prints one JSON
object.

    python bench/guard_corpus.py TOOL corpus|overhead

TOOL: perfkit, nplusone, zeal. ``corpus``: each scenario once under the tool,
in a fresh in-memory SQLite database per process (each scenario in a
transaction rolled back afterwards). ``overhead``: µs per query of a loop of
``list(Book.objects.filter(pk=k))`` without the tool and with it.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
QUERIES = 2000
ROUNDS = 15


def setup(tool: str) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import django
    from django.conf import settings

    apps = ["django.contrib.contenttypes", "guardapp"]
    extra: dict[str, Any] = {}
    if tool == "perfkit":
        sys.path.insert(0, str(ROOT))
        apps.insert(0, "django_perfkit")
        extra["PERFKIT"] = {"REDIS_URL": None, "REDIS_CACHE_ALIAS": None}
    elif tool == "nplusone":
        apps.insert(0, "nplusone.ext.django")
        # The Profiler raises NPlusOneError on every finding whatever these say;
        # they configure the middleware, which the corpus does not use.
        extra["NPLUSONE_RAISE"] = True
        extra["NPLUSONE_LOG"] = False
    elif tool == "zeal":
        apps.insert(0, "zeal")
        extra["ZEAL_RAISE"] = True  # the default; ZEAL_NPLUSONE_THRESHOLD stays 2
    else:
        raise SystemExit(f"unknown tool {tool!r}")
    settings.configure(
        INSTALLED_APPS=apps,
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates"}],
        CACHES={"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}},
        USE_TZ=True,
        SECRET_KEY="bench",
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        **extra,
    )
    django.setup()
    from django.core.management import call_command

    call_command("migrate", run_syncdb=True, verbosity=0, skip_checks=True)
    from guardapp.scenarios import seed

    seed()


def _message(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def run_perfkit(scenario: Callable[[], object]) -> dict[str, Any]:
    from django_perfkit.queries import capture

    with capture() as report:
        scenario()
    findings = list(report.nplusone)
    return {
        "flagged": bool(findings),
        "messages": [str(f) for f in findings],
        "findings": [
            {
                name: str(getattr(f, name, ""))
                for name in ("model", "field", "fingerprint", "count", "location", "origin")
            }
            | {"suggestion": str(getattr(f, "suggestion", "") or "")}
            for f in findings
        ],
    }


def run_nplusone(scenario: Callable[[], object]) -> dict[str, Any]:
    from nplusone.core import exceptions, profiler

    try:
        with profiler.Profiler():
            scenario()
    except exceptions.NPlusOneError as exc:
        messages = []
        error: BaseException | None = exc
        while isinstance(error, exceptions.NPlusOneError):
            messages.append(str(error))
            error = error.__context__
        # The Profiler also raises on an unused eager load ("Potential unnecessary
        # eager load"): only "n+1" messages are N+1 findings.
        return {"flagged": any("n+1" in m for m in messages), "messages": messages}
    return {"flagged": False, "messages": []}


def run_zeal(scenario: Callable[[], object]) -> dict[str, Any]:
    from zeal import NPlusOneError, zeal_context

    try:
        with zeal_context():
            scenario()
    except NPlusOneError as exc:
        return {"flagged": True, "messages": [str(exc).replace(str(ROOT) + "/", "")]}
    return {"flagged": False, "messages": []}


RUNNERS = {"perfkit": run_perfkit, "nplusone": run_nplusone, "zeal": run_zeal}


def corpus(tool: str) -> dict[str, Any]:
    from django.db import transaction
    from guardapp.scenarios import ALL, BORDERLINE, NEGATIVE, POSITIVE

    results: dict[str, Any] = {}
    for name, scenario in ALL.items():
        try:
            with transaction.atomic():
                try:
                    results[name] = RUNNERS[tool](scenario)
                finally:
                    transaction.set_rollback(True)
        except Exception as exc:
            results[name] = {
                "flagged": False,
                "messages": [],
                "error": _message(exc),
                "traceback": traceback.format_exc(limit=-3),
            }
    groups = {"positive": POSITIVE, "negative": NEGATIVE, "borderline": BORDERLINE}
    return {"groups": {k: list(v) for k, v in groups.items()}, "scenarios": results}


def _guards(tool: str) -> dict[str, Callable[[], AbstractContextManager[Any]]]:
    @contextmanager
    def nothing() -> Iterator[None]:
        yield

    if tool == "perfkit":
        from django_perfkit.queries import capture
        from django_perfkit.record import record_request

        return {"none": nothing, "collector": record_request, "guard": capture}
    if tool == "zeal":
        from zeal import zeal_context

        return {"none": nothing, "guard": zeal_context}
    if tool == "nplusone":
        from nplusone.core import profiler

        return {"none": nothing, "guard": profiler.Profiler}
    raise SystemExit(f"unknown tool {tool!r}")


def overhead(tool: str) -> dict[str, Any]:
    from guardapp.models import Book

    keys = list(Book.objects.values_list("pk", flat=True))
    guards = _guards(tool)

    def loop() -> None:
        for i in range(QUERIES):
            list(Book.objects.filter(pk=keys[i % len(keys)]))

    for guard in guards.values():  # warm up
        with guard():
            loop()
    cpu: dict[str, list[float]] = {name: [] for name in guards}
    wall: dict[str, list[float]] = {name: [] for name in guards}
    names = list(guards)
    for r in range(ROUNDS):
        # Round by round the configurations take turns going first.
        for name in names[r % len(names) :] + names[: r % len(names)]:
            wall_start, cpu_start = time.perf_counter_ns(), time.process_time_ns()
            with guards[name]():
                loop()
            cpu[name].append((time.process_time_ns() - cpu_start) / QUERIES / 1000)
            wall[name].append((time.perf_counter_ns() - wall_start) / QUERIES / 1000)
    return {
        "queries": QUERIES,
        "rounds": ROUNDS,
        # The process's own CPU time: other processes on this shared machine
        # (a test suite running alongside) lengthen the wall time, not this.
        "us_per_query": {name: statistics.median(v) for name, v in cpu.items()},
        "wall_us_per_query": {name: statistics.median(v) for name, v in wall.items()},
    }


def versions(tool: str) -> dict[str, str]:
    from importlib.metadata import version

    import django

    out = {"django": django.get_version()}
    dist = {"perfkit": "django-perfkit", "nplusone": "nplusone", "zeal": "django-zeal"}[tool]
    try:
        out[tool] = version(dist)
    except Exception:
        out[tool] = "unknown"
    return out


def main() -> None:
    tool, mode = sys.argv[1], sys.argv[2]
    setup(tool)
    result = corpus(tool) if mode == "corpus" else overhead(tool)
    sys.stdout.write(json.dumps({"versions": versions(tool), "result": result}) + "\n")


if __name__ == "__main__":
    main()
