"""perfkit's pytest plugin, run the way a project runs it: pytest in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from django_perfkit.queries import QueryReport
from tests.settings import RUN_ID

ROOT = Path(__file__).resolve().parent.parent

INNER = """
import pytest
from django.db import connection


def run(n):
    with connection.cursor() as cursor:
        for _ in range(n):
            cursor.execute("SELECT 1")


@pytest.mark.django_db
@pytest.mark.query_budget(3)
def test_within_budget():
    run(3)


@pytest.mark.django_db
@pytest.mark.query_budget(3)
def test_over_budget():
    run(5)


@pytest.mark.django_db
@pytest.mark.query_budget(3)
def test_failing_for_its_own_reason():
    run(5)
    assert False, "its own failure"


@pytest.mark.django_db
def test_fixture(perfkit_queries):
    run(2)
    assert perfkit_queries.count == 2


@pytest.mark.query_budget("ten")
def test_bad_budget():
    pass
"""


def test_the_plugin_fails_tests_over_their_query_budget(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(INNER)
    env = {
        **os.environ,
        "PERFKIT_TEST_RUN_ID": f"{RUN_ID}plugin",  # its own test database
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
    }
    out = subprocess.run(
        [sys.executable, "-m", "pytest", str(tmp_path), "-p", "no:cacheprovider", "-q",
         "-o", "addopts=", "-o", "asyncio_default_fixture_loop_scope=function",
         "--rootdir", str(tmp_path)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    text = out.stdout + out.stderr
    assert "query budget exceeded: 5 > 3" in text, text
    assert "5 queries" in text and "SELECT ?" in text  # the report, in the failure
    assert "its own failure" in text
    assert "needs a number of queries" in text
    assert "2 passed" in text and "3 failed" in text, text


def test_the_fixture_is_a_report(perfkit_queries: QueryReport) -> None:
    assert perfkit_queries.count == 0


@pytest.mark.django_db
@pytest.mark.query_budget(1)
def test_the_marker_in_this_suite() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


BUDGETED = """
import json
import pathlib

import pytest
from django.db import connection

PLAN = json.loads((pathlib.Path(__file__).parent / "plan.json").read_text())


def run(sql, n):
    with connection.cursor() as cursor:
        for i in range(n):
            cursor.execute(sql, [i])


@pytest.mark.django_db
def test_grows():
    run("SELECT %s", PLAN["grows"])
    run("SELECT %s + 1", PLAN["grows_new"])


@pytest.mark.django_db
def test_shrinks():
    run("SELECT %s", PLAN["shrinks"])


def test_not_recorded_runs_untouched():
    from django_perfkit.record import current_record

    if PLAN.get("check_untouched"):
        assert current_record() is None


@pytest.mark.django_db(transaction=True)
def test_steady_with_savepoints():
    from django.db import transaction

    with transaction.atomic():
        run("SELECT %s", 2)
"""


def _run_inner(tmp_path: Path, *args: str) -> str:
    env = {
        **os.environ,
        "PERFKIT_TEST_RUN_ID": f"{RUN_ID}budgets",
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
    }
    out = subprocess.run(
        [sys.executable, "-m", "pytest", str(tmp_path), "-p", "no:cacheprovider", "-q",
         "-o", "addopts=", "-o", "asyncio_default_fixture_loop_scope=function",
         "--rootdir", str(tmp_path), *args],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return out.stdout + out.stderr


def test_a_budgets_file_fails_the_tests_whose_query_count_rose(tmp_path: Path) -> None:
    (tmp_path / "test_budgeted.py").write_text(BUDGETED)
    plan = tmp_path / "plan.json"
    budgets = tmp_path / "budgets.json"
    plan.write_text('{"grows": 2, "grows_new": 0, "shrinks": 3}')
    text = _run_inner(tmp_path, f"--perfkit-budgets={budgets}", "--perfkit-record")
    assert "4 passed" in text and "query budgets written" in text, text
    recorded = json.loads(budgets.read_text())
    grows = "test_budgeted.py::test_grows"
    assert recorded[grows] == {"queries": 2, "shapes": {"SELECT ?": 2}}
    # SAVEPOINT / RELEASE are not counted: they depend on how the test is wrapped.
    assert recorded["test_budgeted.py::test_steady_with_savepoints"]["queries"] == 2

    plan.write_text('{"grows": 3, "grows_new": 2, "shrinks": 1, "check_untouched": true}')
    del recorded["test_budgeted.py::test_not_recorded_runs_untouched"]
    budgets.write_text(json.dumps(recorded))
    text = _run_inner(tmp_path, f"--perfkit-budgets={budgets}")
    assert "1 failed, 3 passed" in text, text
    assert "query count rose: 5 > 2" in text
    assert "+ 3 x SELECT ?  (was 2)" in text
    assert "+ 2 x SELECT ? + ?  (new)" in text
    assert "test_budgeted.py::test_shrinks: 3 -> 1" in text  # improved, listed
    assert json.loads(budgets.read_text()) == recorded  # comparing never rewrites it


def test_budgets_options_are_checked(tmp_path: Path) -> None:
    (tmp_path / "test_budgeted.py").write_text("def test_nothing():\n    pass\n")
    text = _run_inner(tmp_path, "--perfkit-record")
    assert "--perfkit-record needs --perfkit-budgets" in text
    text = _run_inner(tmp_path, f"--perfkit-budgets={tmp_path / 'missing.json'}")
    assert "write it first with --perfkit-record" in text


def test_budgets_under_xdist_are_recorded_and_checked_by_the_controller(tmp_path: Path) -> None:
    (tmp_path / "test_budgeted.py").write_text(BUDGETED)
    plan = tmp_path / "plan.json"
    budgets = tmp_path / "budgets.json"
    plan.write_text('{"grows": 2, "grows_new": 0, "shrinks": 3}')
    text = _run_inner(tmp_path, "-n", "2", f"--perfkit-budgets={budgets}", "--perfkit-record")
    assert "4 passed" in text and "query budgets written" in text, text
    recorded = json.loads(budgets.read_text())
    # Every worker's tests, in one file written once by the controller.
    assert len(recorded) == 4
    assert recorded["test_budgeted.py::test_grows"]["queries"] == 2
    assert recorded["test_budgeted.py::test_shrinks"]["queries"] == 3

    plan.write_text('{"grows": 3, "grows_new": 0, "shrinks": 1}')
    text = _run_inner(tmp_path, "-n", "2", f"--perfkit-budgets={budgets}")
    assert "1 failed, 3 passed" in text, text
    assert "query count rose: 3 > 2" in text
    assert "test_budgeted.py::test_shrinks: 3 -> 1" in text  # reported by the controller
    assert json.loads(budgets.read_text()) == recorded


NPLUSONE = """
import pytest

from helpers import publisher_names, seed


@pytest.mark.django_db
def test_naive():
    seed()
    assert len(publisher_names()) == 3


@pytest.mark.django_db
def test_optimised():
    seed()
    assert len(publisher_names(optimised=True)) == 3


@pytest.mark.django_db
@pytest.mark.nplusone_expected
def test_expected_and_found():
    seed()
    publisher_names()


@pytest.mark.django_db
@pytest.mark.nplusone_expected
def test_expected_but_fixed():
    seed()
    publisher_names(optimised=True)


@pytest.mark.django_db
def test_own_loop_is_not_guarded():
    from tests.guardapp.models import Writer

    seed()
    assert [w.publisher.name for w in Writer.objects.all()]
"""

HELPERS = """
from tests.guardapp.models import Publisher, Writer


def seed():
    for i in range(3):
        Writer.objects.create(name=str(i), publisher=Publisher.objects.create(name=str(i)))


def publisher_names(optimised=False):
    writers = Writer.objects.all()
    if optimised:
        writers = writers.select_related("publisher")
    return [writer.publisher.name for writer in writers]
"""

ALLOWLIST_CONFTEST = """
def pytest_configure(config):
    from django.conf import settings

    from django_perfkit import conf

    settings.PERFKIT = {
        **settings.PERFKIT,
        "QUERY_GUARD": {
            "ALLOWLIST": [
                {"relation": "guardapp.Nothing.*"},
                {"relation": "guardapp.Writer.publisher", "location": "helpers.py:*"},
            ],
        },
    }
    conf.reset()
"""


def _nplusone_project(tmp_path: Path) -> None:
    (tmp_path / "test_nplusone_inner.py").write_text(NPLUSONE)
    (tmp_path / "helpers.py").write_text(HELPERS)


def test_nplusone_fail_fails_the_tests_with_an_n_plus_one(tmp_path: Path) -> None:
    _nplusone_project(tmp_path)
    text = _run_inner(tmp_path, "--perfkit-nplusone=fail")
    assert "2 failed, 3 passed" in text, text
    assert "FAILED test_nplusone_inner.py::test_naive - " in text
    assert "perfkit found 1 N+1 queries:" in text
    assert "N+1: guardapp.Writer.publisher x3" in text
    assert "at helpers.py:14 in " in text  # the loop's line, in the project's code
    assert "queryset built at helpers.py:11 in publisher_names" in text
    assert 'fix: select_related("publisher") on the guardapp.Writer queryset' in text
    assert "marked nplusone_expected, but perfkit found no N+1 here" in text
    assert "FAILED test_nplusone_inner.py::test_expected_but_fixed" in text
    # Without the option the same tests pass: nothing is wrapped.
    assert "5 passed" in _run_inner(tmp_path)


def test_nplusone_warn_warns_instead(tmp_path: Path) -> None:
    _nplusone_project(tmp_path)
    text = _run_inner(tmp_path, "--perfkit-nplusone=warn")
    assert "5 passed" in text, text
    assert "perfkit found N+1 queries" in text  # in the warnings summary


def test_allowlist_entries_that_matched_nothing_are_listed(tmp_path: Path) -> None:
    _nplusone_project(tmp_path)
    (tmp_path / "conftest.py").write_text(ALLOWLIST_CONFTEST)
    text = _run_inner(tmp_path, "--perfkit-nplusone=fail", "-k", "not fixed")
    # test_naive's N+1 is allowlisted: it passes.
    assert "4 passed" in text, text
    assert "1 QUERY_GUARD['ALLOWLIST'] entries matched no finding" in text
    assert "{'relation': 'guardapp.Nothing.*'}" in text
    assert "'guardapp.Writer.publisher'" not in text


EXPLAINED = """
import pytest
from django.db import connection

from tests.guardapp.models import Event


@pytest.fixture
def many_events():
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO guardapp_event (name, kind, happened, is_public) "
            "SELECT 'n' || g, g % 5, now(), true FROM generate_series(1, 30000) g"
        )
        cursor.execute("ANALYZE guardapp_event")


@pytest.mark.django_db(transaction=True)
def test_unindexed_filter(many_events):
    assert not Event.objects.filter(name="nobody").exists()


@pytest.mark.django_db(transaction=True)
def test_key_lookup(many_events):
    assert Event.objects.filter(pk=1).exists() in (True, False)


@pytest.mark.index_advice_expected
@pytest.mark.django_db(transaction=True)
def test_deliberately_unindexed(many_events):
    assert not Event.objects.filter(name="somebody").exists()


@pytest.mark.index_advice_expected
@pytest.mark.django_db(transaction=True)
def test_marked_but_indexed(many_events):
    assert Event.objects.filter(pk=2).exists() in (True, False)
"""


@pytest.mark.skipif(
    __import__("django.db").db.connection.vendor != "postgresql", reason="EXPLAIN on PostgreSQL"
)
def test_perfkit_explain_fails_or_reports_tests_with_index_advice(tmp_path: Path) -> None:
    (tmp_path / "test_explained.py").write_text(EXPLAINED)
    text = _run_inner(tmp_path, "--perfkit-explain=fail")
    assert "2 failed, 2 passed" in text, text
    assert "FAILED test_explained.py::test_unindexed_filter" in text
    assert "missing index: guardapp.Event" in text
    assert 'fix: add models.Index(fields=["name"]' in text
    # The marked naive test passes; the marked one with nothing to advise fails.
    assert "FAILED test_explained.py::test_marked_but_indexed" in text
    assert "marked index_advice_expected, but perfkit's index advisor had nothing" in text
    text = _run_inner(tmp_path, "--perfkit-explain=report")
    assert "4 passed" in text, text
    assert "perfkit: index advice in 1 tests:" in text
    assert "test_explained.py::test_unindexed_filter" in text
