"""perfkit's pytest plugin: query budgets on tests.

Registered through the ``pytest11`` entry point, so it is active wherever
django-perfkit is installed; it does nothing to a test that does not ask:

* ``@pytest.mark.query_budget(10)``: the test fails if it runs more than 10
  queries (counted by :func:`django_perfkit.queries.capture`, so past Django's
  9,000-query log too), with the report of what ran in the failure message.
* the ``perfkit_queries`` fixture: a :class:`~django_perfkit.queries.QueryReport`
  of the test's queries, to assert on yourself.

Budgets recorded to a file, N+1 findings and ``pytest-xdist`` are not here yet.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

import pytest

__all__ = ["perfkit_queries"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "query_budget(max_queries): fail the test if it runs more than max_queries "
        "database queries (django-perfkit)",
    )


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
    if budget is None:
        return (yield)
    from django_perfkit.queries import capture

    with capture() as report:
        result = yield  # a failing test raises here, and fails as itself
    if report.count > budget:
        pytest.fail(f"query budget exceeded: {report.count} > {budget}\n{report}", pytrace=False)
    return result


@pytest.fixture
def perfkit_queries() -> Iterator[Any]:
    """The queries of the test, as a :class:`~django_perfkit.queries.QueryReport`."""
    from django_perfkit.queries import capture

    with capture() as report:
        yield report
