from __future__ import annotations

import re
from typing import Any

import django
import pytest
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, Client, RequestFactory, override_settings

from django_perfkit import reporters
from django_perfkit.middleware import PerfkitMiddleware
from django_perfkit.record import current_record, timer
from django_perfkit.reporters.server_timing import metric_name

ENTRY = re.compile(r'^[^;,\s]+(;dur=[0-9.]+)?(;desc="[^"]*")?$')


def parse(header: str) -> dict[str, str]:
    entries = {}
    for entry in header.split(", "):
        assert ENTRY.match(entry), entry
        entries[entry.split(";")[0]] = entry
    return entries


def view_with_queries(request: HttpRequest) -> HttpResponse:
    with timer("work"):
        User.objects.filter(username="a").exists()
        User.objects.filter(username="b").exists()
    return HttpResponse("ok")


async def async_view(request: HttpRequest) -> HttpResponse:
    with timer("async-work"):
        await User.objects.filter(username="a").aexists()
    record = current_record()
    assert record is not None
    return HttpResponse(str(record.db.count))


@pytest.mark.django_db
def test_sync_request_gets_server_timing() -> None:
    mw = PerfkitMiddleware(view_with_queries)
    response = mw(RequestFactory().get("/x"))
    entries = parse(response["Server-Timing"])
    assert entries["db"].endswith('desc="2 queries"')
    assert "work" in entries
    assert float(entries["total"].split("dur=")[1]) > 0


@pytest.mark.django_db(transaction=True)
async def test_async_request_gets_server_timing() -> None:
    mw = PerfkitMiddleware(_async_get_response)
    assert mw.async_mode
    response = await mw(RequestFactory().get("/x"))
    assert response.content == b"1"
    entries = parse(response["Server-Timing"])
    assert entries["db"].endswith('desc="1 query"')
    assert "async-work" in entries


async def _async_get_response(request: HttpRequest) -> Any:
    return await async_view(request)


@pytest.mark.django_db
def test_full_stack_counts_middleware_queries_and_resolves_the_route(client: Client) -> None:
    user = User.objects.create_user("alice", password="pw")
    client.force_login(user)
    seen = []
    reporters.REPORTERS.append(lambda rec, req, resp: seen.append(rec))
    try:
        response = client.get("/healthz")
    finally:
        reporters.REPORTERS.pop()
    assert response.status_code == 200
    (rec,) = seen
    assert rec.status == 200
    assert rec.route == "healthz"
    # No query in the view, but the session and the user were loaded by
    # middleware, which runs inside perfkit's.
    assert "Server-Timing" in response


@pytest.mark.django_db
def test_existing_server_timing_header_is_kept() -> None:
    def view(request: HttpRequest) -> HttpResponse:
        response = HttpResponse("ok")
        response["Server-Timing"] = "cdn;dur=1"
        return response

    response = PerfkitMiddleware(view)(RequestFactory().get("/"))
    assert response["Server-Timing"].startswith("cdn;dur=1, ")
    assert "total;dur=" in response["Server-Timing"]


def test_disabled_means_no_header_and_no_record() -> None:
    def view(request: HttpRequest) -> HttpResponse:
        assert current_record() is None
        return HttpResponse("ok")

    with override_settings(PERFKIT={"ENABLED": False}):
        response = PerfkitMiddleware(view)(RequestFactory().get("/"))
    assert "Server-Timing" not in response


def test_mode_off() -> None:
    with override_settings(PERFKIT={"SERVER_TIMING": "off"}):
        response = PerfkitMiddleware(lambda r: HttpResponse())(RequestFactory().get("/"))
    assert "Server-Timing" not in response


@pytest.mark.parametrize(
    ("remote", "forwarded", "expected"),
    [("10.1.1.1", "", True), ("203.0.113.9", "", False), ("203.0.113.9", "10.1.1.1", False)],
)
def test_mode_internal_uses_remote_addr_only(remote: str, forwarded: str, expected: bool) -> None:
    request = RequestFactory().get("/", REMOTE_ADDR=remote, HTTP_X_FORWARDED_FOR=forwarded)
    with override_settings(PERFKIT={"SERVER_TIMING": "internal"}, INTERNAL_IPS=["10.1.1.1"]):
        response = PerfkitMiddleware(lambda r: HttpResponse())(request)
    assert ("Server-Timing" in response) is expected


@pytest.mark.django_db
@pytest.mark.parametrize(("is_staff", "expected"), [(True, True), (False, False)])
def test_mode_staff(client: Client, is_staff: bool, expected: bool) -> None:
    user = User.objects.create_user("bob", password="pw", is_staff=is_staff)
    client.force_login(user)
    with override_settings(PERFKIT={"SERVER_TIMING": "staff"}):
        response = client.get("/healthz")
    assert ("Server-Timing" in response) is expected


@pytest.mark.django_db
def test_mode_staff_hides_from_anonymous(client: Client) -> None:
    with override_settings(PERFKIT={"SERVER_TIMING": "staff_or_internal"}):
        response = client.get("/healthz")
    assert "Server-Timing" not in response


@pytest.mark.skipif(django.VERSION < (5, 0), reason="AsyncClient.aforce_login is Django 5.0+")
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("is_staff", "expected"), [(True, True), (False, False)])
async def test_mode_staff_under_asgi(
    async_client: AsyncClient, is_staff: bool, expected: bool
) -> None:
    user = await User.objects.acreate(username="carol", is_staff=is_staff)
    await async_client.aforce_login(user)
    with override_settings(PERFKIT={"SERVER_TIMING": "staff"}):
        response = await async_client.get("/healthz")
    assert response.status_code == 200
    assert ("Server-Timing" in response) is expected


def test_a_failing_reporter_does_not_fail_the_response(caplog: pytest.LogCaptureFixture) -> None:
    def broken(rec: Any, req: Any, resp: Any) -> None:
        raise RuntimeError("reporter bug")

    reporters.REPORTERS.insert(0, broken)
    try:
        response = PerfkitMiddleware(lambda r: HttpResponse("ok"))(RequestFactory().get("/"))
    finally:
        reporters.REPORTERS.remove(broken)
    assert response.status_code == 200
    assert "total;dur=" in response["Server-Timing"]  # later reporters still ran
    assert "reporter bug" in caplog.text


@pytest.mark.parametrize(
    ("label", "expected"),
    [("render", "render"), ("my section", "my-section"), ('a"b,c;d', "a-b-c-d")],
)
def test_labels_become_tokens(label: str, expected: str) -> None:
    assert metric_name(label) == expected


def test_label_cannot_inject_header_syntax() -> None:
    def view(request: HttpRequest) -> HttpResponse:
        with timer('x";dur=999, evil'):
            pass
        return HttpResponse()

    header = PerfkitMiddleware(view)(RequestFactory().get("/"))["Server-Timing"]
    # The label is one token; no extra entry, no second "dur".
    assert set(parse(header)) == {"x--dur-999--evil", "total"}


@pytest.mark.django_db
def test_server_timing_names_duplicates_the_view_and_the_rate_limit(client: Client) -> None:
    from django_perfkit.record import RatelimitDecision

    def view(request: HttpRequest) -> HttpResponse:
        record = current_record()
        assert record is not None
        User.objects.filter(username="a").exists()
        User.objects.filter(username="a").exists()  # the same again
        record.ratelimits.append(RatelimitDecision("login", False, 5, 3, "sliding", False))
        return HttpResponse("ok")

    mw = PerfkitMiddleware(view)
    request = RequestFactory().get("/x")
    mw.process_view(request, view, (), {})  # outside a request: no record, no effect
    entries = parse(mw(request)["Server-Timing"])
    assert entries["db"].endswith('desc="2 queries (1 duplicate)"')
    assert entries["ratelimit"] == 'ratelimit;desc="3/5 left"'  # no view name
    assert "view" not in entries  # process_view ran outside the request here
    # Through Django's handler, process_view runs inside the request: a view entry.
    header = client.get("/articles/")["Server-Timing"]
    view = re.search(r"\bview;dur=([0-9.]+)", header)
    total = re.search(r"\btotal;dur=([0-9.]+)", header)
    assert view and total and 0 < float(view.group(1)) <= float(total.group(1))
