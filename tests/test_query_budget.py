"""@query_budget, the query guard's modes, and the middleware acting on them."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory

from django_perfkit.conf import get_settings
from django_perfkit.middleware import PerfkitMiddleware
from django_perfkit.queries import (
    NPlusOneDetected,
    QueryBudgetExceeded,
    capture,
    query_budget,
)
from tests.guardapp.models import Book, Publisher, Writer

pytestmark = pytest.mark.django_db


@pytest.fixture
def writers() -> None:
    for i in range(3):
        Writer.objects.create(name=f"w{i}", publisher=Publisher.objects.create(name=f"p{i}"))


def guard(settings: Any, **values: Any) -> None:
    settings.PERFKIT = {**settings.PERFKIT, "QUERY_GUARD": values}


def naive() -> list[str]:
    return [w.publisher.name for w in Writer.objects.all()]


def optimised() -> list[str]:
    return [w.publisher.name for w in Writer.objects.select_related("publisher")]


# --- modes --------------------------------------------------------------------------


def test_the_default_mode_is_raise_under_tests_and_debug_log_otherwise(settings: Any) -> None:
    assert get_settings().query_guard.mode is None
    assert get_settings().query_guard.effective_mode() == "raise"  # pytest-django's test env
    from django.core import mail
    from django.test.utils import _TestState

    saved = _TestState.saved_data
    del _TestState.saved_data  # what production looks like
    mail.outbox = []  # the locmem email backend makes one in production too
    try:
        settings.DEBUG = False
        assert get_settings().query_guard.effective_mode() == "log"
        settings.DEBUG = True
        assert get_settings().query_guard.effective_mode() == "raise"
    finally:
        _TestState.saved_data = saved
    guard(settings, MODE="off")
    assert get_settings().query_guard.effective_mode() == "off"


# --- @query_budget ------------------------------------------------------------------


def test_a_budget_raises_with_the_whole_report(writers: None) -> None:
    @query_budget(max_queries=2, nplusone="off", mode="raise")
    def view() -> list[str]:
        return naive()

    with pytest.raises(QueryBudgetExceeded) as caught:
        view()
    text = str(caught.value)
    assert "4 queries, budget 2" in text
    assert "test_a_budget_raises_with_the_whole_report.<locals>.view:" in text  # where
    assert "guardapp_publisher" in text  # the report: query shapes with call sites
    assert caught.value.report is not None and caught.value.report.count == 4


def test_within_budget_and_without_nplusone_returns_the_result(writers: None) -> None:
    @query_budget(max_queries=1, max_duplicates=0, nplusone="raise", mode="raise")
    def view() -> list[str]:
        return optimised()

    assert view() == ["p0", "p1", "p2"]


def test_an_nplusone_raises_in_raise_mode(writers: None) -> None:
    @query_budget(nplusone="raise")
    def view() -> list[str]:
        return naive()

    with pytest.raises(NPlusOneDetected, match=r"N\+1: guardapp.Writer.publisher x3"):
        view()


def test_log_mode_logs_one_structured_line(writers: None, caplog: Any) -> None:
    @query_budget(max_queries=1, nplusone="log", mode="log")
    def view() -> list[str]:
        return naive()

    with caplog.at_level(logging.WARNING, logger="django_perfkit.queries"):
        assert len(view()) == 3
    (record,) = [r for r in caplog.records if r.name == "django_perfkit.queries"]
    data = record.perfkit  # type: ignore[attr-defined]
    assert data["queries"] == 4
    assert data["over_budget"] == ["4 queries, budget 1"]
    assert data["nplusone"][0]["relation"] == "guardapp.Writer.publisher"
    assert data["nplusone"][0]["suggestion"].startswith('select_related("publisher")')


def test_duplicates_budget(writers: None) -> None:
    with (
        pytest.raises(QueryBudgetExceeded, match="2 exact duplicate queries, budget 0"),
        query_budget(max_duplicates=0, nplusone="off", mode="raise"),
    ):
        for _ in range(3):
            list(Writer.objects.filter(name="w1"))


def test_the_context_manager_yields_the_report(writers: None) -> None:
    with query_budget(max_queries=5) as report:
        optimised()
    assert report.count == 1
    assert report.nplusone == []


def test_an_exception_in_the_block_is_not_replaced(writers: None) -> None:
    with pytest.raises(ZeroDivisionError), query_budget(max_queries=0, mode="raise"):
        naive()
        1 / 0  # noqa: B018


@pytest.mark.django_db(transaction=True)  # the ORM's thread sees the rows
async def test_async_view(writers: None) -> None:
    @query_budget(max_queries=1, nplusone="raise", mode="raise")
    async def view() -> list[str]:
        return await sync_to_async(naive)()

    with pytest.raises((NPlusOneDetected, QueryBudgetExceeded)):
        await view()

    @query_budget(max_queries=1, nplusone="raise", mode="raise")
    async def fine() -> list[str]:
        return [w.publisher.name async for w in Writer.objects.select_related("publisher")]

    assert await fine() == ["p0", "p1", "p2"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_queries": -1}, "max_queries must be a whole number >= 0"),
        ({"max_queries": "10"}, "max_queries must be a whole number >= 0"),
        ({"max_duplicates": True}, "max_duplicates must be a whole number >= 0"),
        ({"nplusone": "loud"}, 'write one of "log", "warn", "raise", "off"'),
        ({"mode": "strict"}, 'write one of "log", "warn", "raise", "off"'),
    ],
)
def test_bad_arguments_fail_at_decoration(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        query_budget(**kwargs)


def test_a_finding_is_acted_on_once(writers: None, caplog: Any) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="django_perfkit.queries"),
        query_budget(nplusone="log"),
        query_budget(nplusone="log"),
    ):
        naive()
    assert len([r for r in caplog.records if r.name == "django_perfkit.queries"]) == 1


def test_allowlist_by_relation_and_location(writers: None, settings: Any) -> None:
    guard(settings, ALLOWLIST=[{"relation": "guardapp.Writer.publisher"}])
    with query_budget(nplusone="raise") as report:
        naive()
    assert len(report.nplusone) == 1  # still reported, not acted on
    guard(settings, ALLOWLIST=[{"location": "tests/test_query_budget.py:*"}])
    with query_budget(nplusone="raise"):
        naive()
    guard(settings, ALLOWLIST=[{"location": "other/*"}])
    with pytest.raises(NPlusOneDetected), query_budget(nplusone="raise"):
        naive()


def test_unmatched_allowlist_entries(writers: None, settings: Any) -> None:
    from django_perfkit.queries import budget

    budget._matched.clear()
    guard(
        settings,
        ALLOWLIST=[{"relation": "guardapp.Writer.publisher"}, {"relation": "guardapp.Gone.*"}],
    )
    with query_budget(nplusone="raise"):
        naive()
    assert budget.unmatched_allowlist_entries() == [{"relation": "guardapp.Gone.*"}]


# --- the middleware -----------------------------------------------------------------


def _view(body: Any) -> Any:
    def view(request: HttpRequest) -> HttpResponse:
        body()
        return HttpResponse("ok")

    return view


def test_middleware_raise_mode(writers: None, settings: Any) -> None:
    guard(settings, MODE="raise")
    middleware = PerfkitMiddleware(_view(naive))
    with pytest.raises(NPlusOneDetected, match="GET /books/"):
        middleware(RequestFactory().get("/books/"))
    assert PerfkitMiddleware(_view(optimised))(RequestFactory().get("/")).status_code == 200


def test_middleware_log_mode_serves_and_logs(writers: None, settings: Any, caplog: Any) -> None:
    guard(settings, MODE="log", MAX_QUERIES=2)
    with caplog.at_level(logging.WARNING, logger="django_perfkit.queries"):
        response = PerfkitMiddleware(_view(naive))(RequestFactory().get("/books/"))
    assert response.status_code == 200
    assert "X-Perfkit-Queries" not in response
    (record,) = [r for r in caplog.records if r.name == "django_perfkit.queries"]
    assert record.perfkit["where"] == "GET /books/"  # type: ignore[attr-defined]
    assert record.perfkit["over_budget"] == ["4 queries, budget 2"]  # type: ignore[attr-defined]


def test_middleware_warn_header_only_for_those_who_may_see_code(
    writers: None, settings: Any
) -> None:
    guard(settings, MODE="warn")
    middleware = PerfkitMiddleware(_view(naive))
    response = middleware(RequestFactory().get("/books/", REMOTE_ADDR="203.0.113.9"))
    assert "X-Perfkit-Queries" not in response
    settings.INTERNAL_IPS = ["203.0.113.9"]
    response = middleware(RequestFactory().get("/books/", REMOTE_ADDR="203.0.113.9"))
    assert response["X-Perfkit-Queries"].startswith(
        "4 queries, 0 duplicates; N+1: guardapp.Writer.publisher x3 at tests/test_query_budget.py:"
    )
    # A spoofed X-Forwarded-For does not make a client internal.
    settings.INTERNAL_IPS = ["127.0.0.1"]
    response = middleware(
        RequestFactory().get("/books/", REMOTE_ADDR="203.0.113.9", HTTP_X_FORWARDED_FOR="127.0.0.1")
    )
    assert "X-Perfkit-Queries" not in response


def test_middleware_off_mode_does_not_wrap_querysets(writers: None, settings: Any) -> None:
    from django_perfkit.queries import guard as guard_module

    guard(settings, MODE="off")
    if guard_module._open:
        pytest.skip("a guard around the test is open (pytest --perfkit-nplusone)")
    guard_module.uninstall()
    response = PerfkitMiddleware(_view(naive))(RequestFactory().get("/"))
    assert response.status_code == 200
    assert not guard_module.installed()


@pytest.mark.django_db(transaction=True)
async def test_async_middleware_raise_mode(writers: None, settings: Any) -> None:
    guard(settings, MODE="raise")

    async def view(request: HttpRequest) -> HttpResponse:
        await sync_to_async(naive)()
        return HttpResponse("ok")

    with pytest.raises(NPlusOneDetected, match=r"guardapp.Writer.publisher x3"):
        await PerfkitMiddleware(view)(RequestFactory().get("/"))


def test_a_request_inside_capture_reports_its_findings_there(writers: None, settings: Any) -> None:
    guard(settings, MODE="log")
    with capture() as report:
        PerfkitMiddleware(_view(naive))(RequestFactory().get("/"))
    assert [f.relation for f in report.nplusone] == ["guardapp.Writer.publisher"]
    assert report.nplusone[0].handled  # logged by the middleware already


def test_the_same_view_twice_in_one_capture_is_not_an_nplusone(
    writers: None, settings: Any
) -> None:
    guard(settings, MODE="log")
    middleware = PerfkitMiddleware(_view(lambda: Book.objects.filter(title="x").first()))
    with capture() as report:
        middleware(RequestFactory().get("/"))
        middleware(RequestFactory().get("/"))
    assert report.count == 2
    assert report.nplusone == []


def test_one_instance_shared_by_threads() -> None:
    import threading

    shared = query_budget(max_queries=5, nplusone="off", mode="raise")
    errors: list[BaseException] = []
    reports: list[Any] = []
    barrier = threading.Barrier(2)

    def work() -> None:
        try:
            with shared as report:
                barrier.wait(timeout=10)  # both blocks open at once
                reports.append(report)
                barrier.wait(timeout=10)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert len(reports) == 2 and reports[0] is not reports[1]
