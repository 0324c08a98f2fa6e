"""perfkit's pytest plugin: query budgets on tests.

Registered through the ``pytest11`` entry point, so it is active wherever
django-perfkit is installed; it does nothing to a test that does not ask:

* ``@pytest.mark.query_budget(10)``: the test fails if it runs more than 10
  queries (counted by :func:`django_perfkit.queries.capture`, so past Django's
  9,000-query log too), with the report of what ran in the failure message.
* the ``perfkit_queries`` fixture: a :class:`~django_perfkit.queries.QueryReport`
  of the test's queries, to assert on yourself.
* ``--perfkit-budgets=FILE --perfkit-record`` writes every passing test's
  query count and query shapes to ``FILE``; ``--perfkit-budgets=FILE`` then
  fails every test whose count rose, with the shapes that were added, and
  lists the tests that improved.
* ``--perfkit-nplusone=fail`` fails every test in which an N+1 was found
  (``warn``: a pytest warning instead); a test marked
  ``@pytest.mark.nplusone_expected`` must have one (a deliberately naive view
  that the guard has to catch). ``QUERY_GUARD["ALLOWLIST"]`` entries that
  matched nothing in the run are listed at the end.

* ``--perfkit-explain=fail`` fails every test whose queries get index advice
  (every query shape is explained, on PostgreSQL and SQLite); ``=report``
  lists the advice at the end of the run. A test marked
  ``@pytest.mark.index_advice_expected`` must get some (a deliberately
  unindexed query that the advisor has to catch), and does not fail for it.

Works with ``pytest-xdist``: workers send what they recorded and what
improved to the controller, which writes the file and prints the summary.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["perfkit_queries"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("perfkit", "django-perfkit query budgets")
    group.addoption(
        "--perfkit-budgets",
        metavar="FILE",
        help="compare each test's query count with FILE (JSON); fail the ones that rose",
    )
    group.addoption(
        "--perfkit-record",
        action="store_true",
        help="write the query counts of the tests that pass to --perfkit-budgets instead",
    )
    group.addoption(
        "--perfkit-explain",
        choices=("fail", "report", "off"),
        default="off",
        help="EXPLAIN every query shape (PostgreSQL): fail the tests with index advice, "
        "or list the advice at the end (default: off)",
    )
    group.addoption(
        "--perfkit-nplusone",
        choices=("fail", "warn", "off"),
        default="off",
        help="fail (or warn about) tests in which perfkit finds an N+1 (default: off)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "query_budget(max_queries): fail the test if it runs more than max_queries "
        "database queries (django-perfkit)",
    )
    config.addinivalue_line(
        "markers",
        "nplusone_expected: the test exercises a deliberate N+1; with --perfkit-nplusone "
        "it must have one, and it does not fail for it (django-perfkit)",
    )
    config.addinivalue_line(
        "markers",
        "index_advice_expected: the test runs a deliberately unindexed query; with "
        "--perfkit-explain it must get index advice, and does not fail for it (django-perfkit)",
    )
    path = config.getoption("perfkit_budgets", None)
    if config.getoption("perfkit_record", False) and not path:
        raise pytest.UsageError("--perfkit-record needs --perfkit-budgets=FILE to write to")
    if path:
        config.stash[_BUDGETS] = Budgets(Path(path), config.getoption("perfkit_record"))
    config.stash[_NPLUSONE] = config.getoption("perfkit_nplusone", "off") or "off"
    config.stash[_EXPLAIN] = config.getoption("perfkit_explain", "off") or "off"
    config.stash[_ADVICE] = []


# Transaction control: how many of these run depends on how the test database
# wraps the test (pytest-django's django_db vs transaction=True), not on the code.
_CONTROL = re.compile(r"\s*(SAVEPOINT|RELEASE|ROLLBACK|BEGIN|COMMIT|START TRANSACTION)\b", re.I)


class Budgets:
    """The budgets file: ``{test id: {"queries": n, "shapes": {fingerprint: n}}}``."""

    def __init__(self, path: Path, record: bool) -> None:
        self.path = path
        self.recording = record
        self.known: dict[str, Any] = {}
        if path.exists():
            try:
                self.known = json.loads(path.read_text())
            except ValueError as exc:
                raise pytest.UsageError(f"--perfkit-budgets: {path} is not JSON: {exc}") from None
        elif not record:
            raise pytest.UsageError(
                f"--perfkit-budgets: {path} does not exist; write it first with --perfkit-record"
            )
        self.improved: list[tuple[str, int, int]] = []

    @staticmethod
    def measure(report: Any) -> tuple[int, Counter[str], dict[str, str | None]]:
        from django_perfkit.queries import fingerprint

        shapes: Counter[str] = Counter()
        sites: dict[str, str | None] = {}
        control = 0
        for query in report.queries:
            if _CONTROL.match(query.sql):
                control += 1
                continue
            shape = fingerprint(query.sql)
            shapes[shape] += 1
            sites.setdefault(shape, query.call_site)
        return report.count - control, shapes, sites

    def check(self, nodeid: str, report: Any) -> None:
        count, shapes, sites = self.measure(report)
        if self.recording:
            self.known[nodeid] = {"queries": count, "shapes": dict(sorted(shapes.items()))}
            return
        budget = self.known.get(nodeid)
        if budget is None:
            return
        allowed = int(budget.get("queries", 0))
        if count < allowed:
            self.improved.append((nodeid, allowed, count))
        if count <= allowed:
            return
        before = Counter(budget.get("shapes", {}))
        lines = [f"query count rose: {count} > {allowed} (budget in {self.path})"]
        for shape, now in sorted(shapes.items(), key=lambda item: -item[1]):
            was = before.get(shape, 0)
            if now > was:
                change = "new" if not was else f"was {was}"
                lines.append(f"  + {now} x {shape}  ({change})")
                if sites.get(shape):
                    lines.append(f"      at {sites[shape]}")
        pytest.fail("\n".join(lines), pytrace=False)

    def write(self) -> None:
        text = json.dumps(dict(sorted(self.known.items())), indent=1, sort_keys=True)
        self.path.write_text(text + "\n")


_BUDGETS = pytest.StashKey[Budgets]()
_NPLUSONE = pytest.StashKey[str]()
_EXPLAIN = pytest.StashKey[str]()
#: (test id, advice text) found under --perfkit-explain=report.
_ADVICE = pytest.StashKey[list[tuple[str, str]]]()
_WORKER_UNMATCHED = pytest.StashKey[set[int]]()


def _report_unmatched(terminalreporter: Any, config: pytest.Config) -> None:
    try:
        from django_perfkit.conf import get_settings

        entries = get_settings().query_guard.allowlist
    except Exception:  # Django not configured in this run
        return
    if not entries:
        return
    from_workers = config.stash.get(_WORKER_UNMATCHED, None)
    indexes = sorted(from_workers) if from_workers is not None else _unmatched_indexes()
    if indexes:
        terminalreporter.write_line(
            f"perfkit: {len(indexes)} QUERY_GUARD['ALLOWLIST'] entries matched no finding "
            "in this run (remove them if their N+1 is fixed):"
        )
        for index in indexes:
            terminalreporter.write_line(f"  {entries[index]}")


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    budgets = config.stash.get(_BUDGETS, None)
    if _is_xdist_worker(config):
        # The controller writes the file and prints the summary: hand it ours.
        output = config.workeroutput  # type: ignore[attr-defined]
        if budgets is not None:
            output["perfkit_budgets"] = json.dumps(
                {
                    "recorded": budgets.known if budgets.recording else {},
                    "improved": budgets.improved,
                }
            )
        if config.stash.get(_NPLUSONE, "off") != "off":
            output["perfkit_unmatched"] = json.dumps(_unmatched_indexes())
        if config.stash.get(_ADVICE, None):
            output["perfkit_advice"] = json.dumps(config.stash[_ADVICE])
        return
    if budgets is not None and budgets.recording:
        budgets.write()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: merge a finished worker's budgets and allowlist use."""
    config = node.config
    output = getattr(node, "workeroutput", {})
    budgets = config.stash.get(_BUDGETS, None)
    if budgets is not None and "perfkit_budgets" in output:
        sent = json.loads(output["perfkit_budgets"])
        budgets.known.update(sent["recorded"])
        budgets.improved.extend(tuple(item) for item in sent["improved"])
    if "perfkit_advice" in output and _ADVICE in config.stash:
        config.stash[_ADVICE].extend(tuple(item) for item in json.loads(output["perfkit_advice"]))
    if "perfkit_unmatched" in output:
        seen = config.stash.get(_WORKER_UNMATCHED, None)
        mine = set(json.loads(output["perfkit_unmatched"]))
        config.stash[_WORKER_UNMATCHED] = mine if seen is None else seen & mine


def _unmatched_indexes() -> list[int]:
    from django_perfkit.conf import get_settings
    from django_perfkit.queries.budget import unmatched_allowlist_entries

    unmatched = unmatched_allowlist_entries()
    entries = get_settings().query_guard.allowlist
    return [i for i, entry in enumerate(entries) if entry in unmatched]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if _is_xdist_worker(config):
        return
    if config.stash.get(_NPLUSONE, "off") != "off":
        _report_unmatched(terminalreporter, config)
    advice = config.stash.get(_ADVICE, [])
    if advice:
        terminalreporter.write_line(f"perfkit: index advice in {len(advice)} tests:")
        for nodeid, text in advice:
            terminalreporter.write_line(f"  {nodeid}")
            terminalreporter.write_line("    " + text.replace("\n", "\n    "))
    budgets = config.stash.get(_BUDGETS, None)
    if budgets is None:
        return
    if budgets.recording:
        terminalreporter.write_line(f"perfkit: query budgets written to {budgets.path}")
    elif budgets.improved:
        terminalreporter.write_line(
            f"perfkit: {len(budgets.improved)} tests run fewer queries than their budget "
            "(tighten it with --perfkit-record):"
        )
        for nodeid, was, now in budgets.improved:
            terminalreporter.write_line(f"  {nodeid}: {was} -> {now}")


def _budget(item: pytest.Item) -> int | None:
    marker = item.get_closest_marker("query_budget")
    if marker is None:
        return None
    value: Any = marker.args[0] if marker.args else marker.kwargs.get("max_queries")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.query_budget needs a number of queries >= 0, "
            f"e.g. @pytest.mark.query_budget(10), not {value!r}"
        )
    return value


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    budget = _budget(item)
    budgets = item.config.stash.get(_BUDGETS, None)
    if budgets is not None and not budgets.recording and item.nodeid not in budgets.known:
        budgets = None  # no entry: not checked, and run exactly as without the plugin
    nplusone = item.config.stash.get(_NPLUSONE, "off")
    explain = item.config.stash.get(_EXPLAIN, "off")
    if budget is None and budgets is None and nplusone == "off" and explain == "off":
        return (yield)
    from django_perfkit.queries import capture

    with capture(nplusone=nplusone != "off", explain=explain != "off") as report:
        result = yield  # a failing test raises here, and fails as itself
    if budget is not None and report.count > budget:
        pytest.fail(f"query budget exceeded: {report.count} > {budget}\n{report}", pytrace=False)
    if budgets is not None:
        budgets.check(item.nodeid, report)
    if nplusone != "off":
        _check_nplusone(item, report, nplusone)
    if explain != "off":
        _check_index_advice(item, report, explain)
    return result


def _check_index_advice(item: pytest.Item, report: Any, mode: str) -> None:
    if item.get_closest_marker("index_advice_expected") is not None:
        if not report.index_advice and mode == "fail":
            pytest.fail(
                "marked index_advice_expected, but perfkit's index advisor had nothing to "
                f"say here: remove the mark if the index was added\n{report}",
                pytrace=False,
            )
        return
    if not report.index_advice:
        return
    text = "\n".join(str(advice) for advice in report.index_advice)
    if mode == "fail":
        pytest.fail(f"perfkit: index advice for this test's queries:\n{text}", pytrace=False)
    item.config.stash[_ADVICE].append((item.nodeid, text))


def _check_nplusone(item: pytest.Item, report: Any, mode: str) -> None:
    from django_perfkit.queries.budget import allowlist_matches
    from django_perfkit.record import _short_path

    # The test's own loops (over the rows it asserts on) are not what CI guards.
    own = _short_path(str(item.path)) + ":"
    findings = [
        f
        for f in report.nplusone
        if not (f.location or "").startswith(own) and not allowlist_matches(f)
    ]
    if item.get_closest_marker("nplusone_expected") is not None:
        if not report.nplusone and mode == "fail":
            pytest.fail(
                "marked nplusone_expected, but perfkit found no N+1 here: remove the mark "
                f"if the code was fixed\n{report}",
                pytrace=False,
            )
        return
    if not findings:
        return
    text = "\n".join(str(f) for f in findings)
    if mode == "fail":
        pytest.fail(f"perfkit found {len(findings)} N+1 queries:\n{text}", pytrace=False)
    import warnings

    warnings.warn(f"perfkit found N+1 queries:\n{text}", stacklevel=1)


@pytest.fixture
def perfkit_queries() -> Iterator[Any]:
    """The queries of the test, as a :class:`~django_perfkit.queries.QueryReport`."""
    from django_perfkit.queries import capture

    with capture() as report:
        yield report
