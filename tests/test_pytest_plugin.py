"""perfkit's pytest plugin, run the way a project runs it: pytest in a subprocess."""

from __future__ import annotations

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
