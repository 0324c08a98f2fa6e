"""The profiler: tokens, profiles on a header, their storage and views, slow requests."""

from __future__ import annotations

import json
import logging
import time
from io import StringIO
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.contrib.auth.models import AnonymousUser, User
from django.core import signing
from django.core.management import CommandError, call_command
from django.http import HttpRequest, HttpResponse
from django.test import Client, RequestFactory
from django.urls import path

from django_perfkit.middleware import PerfkitMiddleware
from django_perfkit.profiler import make_token, read_token
from django_perfkit.profiler.session import load_profile, recent_profiles
from django_perfkit.profiler.slow import recent_slow_requests
from django_perfkit.record import current_record

pytestmark = pytest.mark.django_db


def profiler(settings: Any, **values: Any) -> None:
    settings.PERFKIT = {**settings.PERFKIT, "PROFILER": {"MIN_INTERVAL": 0, **values}}


@pytest.fixture
def staff() -> User:
    return User.objects.create_user("alice", password="pw", is_staff=True)


def marker_function_for_the_profile() -> None:
    end = time.perf_counter() + 0.02
    while time.perf_counter() < end:
        sum(range(200))


def busy_view(request: HttpRequest) -> HttpResponse:
    marker_function_for_the_profile()
    return HttpResponse("ok")


async def async_busy_view(request: HttpRequest) -> HttpResponse:
    marker_function_for_the_profile()
    return HttpResponse("ok")


def profile_request(settings: Any, value: str, **meta: Any) -> HttpResponse:
    middleware = PerfkitMiddleware(busy_view)
    request = RequestFactory().get("/busy/", HTTP_X_PERFKIT_PROFILE=value, **meta)
    request.user = meta.pop("user", AnonymousUser())
    response: HttpResponse = middleware(request)
    return response


def stored_functions(profile_id: str) -> str:
    data = load_profile(profile_id)
    assert data is not None
    return json.dumps(data["session"])


# --- tokens ---------------------------------------------------------------------------


def test_a_token_names_its_staff_user(staff: User) -> None:
    assert read_token(make_token(staff, 60)) == staff


@pytest.mark.parametrize(
    "mangle",
    [
        lambda token: token[:-2] + ("AA" if not token.endswith("AA") else "BB"),  # forged
        lambda token: token + "x" * 400,  # oversized
        lambda token: "",
        lambda token: "not a token",
        lambda token: signing.dumps({"u": "1", "e": int(time.time()) + 60}),  # other salt
    ],
    ids=["forged", "oversized", "empty", "garbage", "other-salt"],
)
def test_bad_tokens_name_nobody(staff: User, mangle: Any) -> None:
    assert read_token(mangle(make_token(staff, 60))) is None


def test_an_expired_token_names_nobody(staff: User, monkeypatch: Any) -> None:
    token = make_token(staff, 60)
    monkeypatch.setattr(time, "time", lambda: 10**10)
    assert read_token(token) is None


def test_a_token_of_a_user_no_longer_staff_names_nobody(staff: User) -> None:
    token = make_token(staff, 60)
    staff.is_staff = False
    staff.save()
    assert read_token(token) is None


def test_the_token_command(staff: User) -> None:
    out = StringIO()
    call_command("perfkit_token", "--user", "alice", "--ttl", "15m", stdout=out)
    assert read_token(out.getvalue().strip()) == staff
    with pytest.raises(CommandError, match="write a duration such as 900, 15m"):
        call_command("perfkit_token", "--user", "alice", "--ttl", "soon")
    with pytest.raises(CommandError, match="TOKEN_MAX_TTL"):
        call_command("perfkit_token", "--user", "alice", "--ttl", "30d")
    with pytest.raises(CommandError, match="no user 'bob'"):
        call_command("perfkit_token", "--user", "bob")
    User.objects.create_user("carol")
    with pytest.raises(CommandError, match="not active staff"):
        call_command("perfkit_token", "--user", "carol")


# --- who gets a profile ---------------------------------------------------------------


def test_anyone_else_sending_the_header_gets_nothing(settings: Any) -> None:
    profiler(settings)
    response = profile_request(settings, "1")
    assert response.status_code == 200 and response.content == b"ok"
    assert "X-Perfkit-Profile-Id" not in response
    assert "profile" not in response.get("Server-Timing", "")
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    assert not list(client.scan_iter(match=f"{django_settings.KEY_PREFIX}:{{profile:store}}*"))
    client.close()


def test_debug_and_internal_ips_get_a_profile_of_the_view(settings: Any) -> None:
    profiler(settings)
    settings.DEBUG = True
    settings.INTERNAL_IPS = ["127.0.0.1"]
    response = profile_request(settings, "1")
    assert response.content == b"ok"  # the normal response
    profile_id = response["X-Perfkit-Profile-Id"]
    assert response["X-Perfkit-Profile-Url"] == f"/perfkit/profiles/{profile_id}/"
    assert f'profile;desc="{profile_id}"' in response["Server-Timing"]
    assert "marker_function_for_the_profile" in stored_functions(profile_id)
    # Internal IPs without DEBUG: nothing.
    settings.DEBUG = False
    assert "X-Perfkit-Profile-Id" not in profile_request(settings, "1")


def test_a_token_profiles_production(settings: Any, staff: User) -> None:
    profiler(settings)
    response = profile_request(settings, make_token(staff, 60), REMOTE_ADDR="203.0.113.7")
    assert "marker_function_for_the_profile" in stored_functions(response["X-Perfkit-Profile-Id"])
    assert "X-Perfkit-Profile-Id" not in profile_request(settings, "forged.token")


def test_a_signed_in_staff_user_gets_a_profile_from_the_view_on(settings: Any, staff: User) -> None:
    profiler(settings)
    # Session auth: the user is known in process_view, where the profile starts.
    client = Client()
    client.force_login(staff)
    served = client.get("/articles/", HTTP_X_PERFKIT_PROFILE="1")
    assert served.status_code == 200
    assert "article_list" in stored_functions(served["X-Perfkit-Profile-Id"])
    anonymous = Client().get("/articles/", HTTP_X_PERFKIT_PROFILE="1")
    assert "X-Perfkit-Profile-Id" not in anonymous


def test_one_profile_per_caller_per_interval(settings: Any, staff: User) -> None:
    profiler(settings, MIN_INTERVAL=60)
    token = make_token(staff, 60)
    assert "X-Perfkit-Profile-Id" in profile_request(settings, token)
    second = profile_request(settings, token)
    assert second.status_code == 200 and "X-Perfkit-Profile-Id" not in second


def test_html_returns_the_profile_page(settings: Any) -> None:
    profiler(settings)
    settings.DEBUG = True
    settings.INTERNAL_IPS = ["127.0.0.1"]
    response = profile_request(settings, "html")
    assert response["Content-Type"].startswith("text/html")
    assert b"<html" in response.content.lower() and b"marker_function_for_the_profile" in (
        response.content
    )


def test_without_redis_the_request_is_served_unprofiled(settings: Any, staff: User) -> None:
    settings.PERFKIT = {
        **settings.PERFKIT,
        "REDIS_CACHE_ALIAS": None,
        "PROFILER": {"MIN_INTERVAL": 0},
    }
    response = profile_request(settings, make_token(staff, 60))
    assert response.content == b"ok" and "X-Perfkit-Profile-Id" not in response


def test_a_black_holed_redis_serves_the_request_within_the_timeout(
    settings: Any, staff: User
) -> None:
    # A port nothing listens on: every Redis call fails at once (connect refused).
    settings.PERFKIT = {
        **settings.PERFKIT,
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "PROFILER": {"MIN_INTERVAL": 0},
    }
    start = time.perf_counter()
    response = profile_request(settings, make_token(staff, 60))
    assert response.content == b"ok" and "X-Perfkit-Profile-Id" not in response
    assert time.perf_counter() - start < 5


def test_profiles_are_bounded(settings: Any) -> None:
    profiler(settings, MAX_PROFILES=2)
    settings.DEBUG = True
    settings.INTERNAL_IPS = ["127.0.0.1"]
    ids = [profile_request(settings, "1")["X-Perfkit-Profile-Id"] for _ in range(3)]
    assert load_profile(ids[0]) is None  # the oldest was dropped
    assert load_profile(ids[1]) is not None and load_profile(ids[2]) is not None


def test_the_header_can_be_turned_off(settings: Any) -> None:
    profiler(settings, HEADER="")
    settings.DEBUG = True
    settings.INTERNAL_IPS = ["127.0.0.1"]
    assert "X-Perfkit-Profile-Id" not in profile_request(settings, "1")


async def test_async_view_under_asgi(settings: Any) -> None:
    profiler(settings)
    settings.DEBUG = True
    settings.INTERNAL_IPS = ["127.0.0.1"]
    middleware = PerfkitMiddleware(async_busy_view)
    request = RequestFactory().get("/busy/", HTTP_X_PERFKIT_PROFILE="1")
    response = await middleware(request)
    profile_id = response["X-Perfkit-Profile-Id"]
    from asgiref.sync import sync_to_async

    text = await sync_to_async(stored_functions)(profile_id)
    assert "marker_function_for_the_profile" in text


# --- viewing profiles ---------------------------------------------------------------------


def test_profile_pages_are_for_staff_internal_or_token_holders(settings: Any, staff: User) -> None:
    profiler(settings)
    settings.DEBUG = True
    settings.INTERNAL_IPS = ["127.0.0.1"]
    profile_id = profile_request(settings, "1")["X-Perfkit-Profile-Id"]
    settings.DEBUG = False
    url = f"/perfkit/profiles/{profile_id}/"
    assert Client().get(url).status_code == 404  # the same as a missing one
    assert Client().get(url + "?token=forged").status_code == 404
    page = Client().get(url + "?token=" + make_token(staff, 60))
    assert page.status_code == 200 and b"marker_function_for_the_profile" in page.content
    assert page["Cache-Control"] == "private, no-store"
    client = Client()
    client.force_login(staff)
    speedscope = client.get(url + "speedscope.json")
    assert speedscope["Content-Type"] == "application/json"
    assert "marker_function_for_the_profile" in json.dumps(speedscope.json())
    assert client.get("/perfkit/profiles/nope/").status_code == 404


# --- slow requests ------------------------------------------------------------------------


def test_a_slow_request_is_logged_and_kept(settings: Any, caplog: Any) -> None:
    profiler(settings, SLOW_REQUEST_MS=5)
    with caplog.at_level(logging.WARNING, logger="django_perfkit.slow"):
        PerfkitMiddleware(busy_view)(RequestFactory().get("/busy/"))
        PerfkitMiddleware(lambda request: HttpResponse("fast"))(RequestFactory().get("/fast/"))
    (line,) = [r for r in caplog.records if r.name == "django_perfkit.slow"]
    logged = json.loads(line.getMessage())
    assert logged["path"] == "/busy/" and logged["duration_ms"] >= 5
    assert logged["status"] == 200
    kept = recent_slow_requests()
    assert [entry["path"] for entry in kept] == ["/busy/"]


def test_slow_requests_list_their_slowest_queries_without_parameters(
    settings: Any, caplog: Any
) -> None:
    profiler(settings, SLOW_REQUEST_MS=1)

    def view(request: HttpRequest) -> HttpResponse:
        User.objects.filter(username="secret-name").exists()
        marker_function_for_the_profile()
        return HttpResponse("ok")

    with caplog.at_level(logging.WARNING, logger="django_perfkit.slow"):
        PerfkitMiddleware(view)(RequestFactory().get("/q/"))
    (line,) = [r for r in caplog.records if r.name == "django_perfkit.slow"]
    assert "secret-name" not in line.getMessage()
    (query,) = json.loads(line.getMessage())["slowest_queries"]
    assert 'FROM "auth_user"' in query["sql"] and query["at"].startswith("tests/test_profiler.py")


def test_slow_requests_off(settings: Any, caplog: Any) -> None:
    profiler(settings, SLOW_REQUEST_MS=0)
    with caplog.at_level(logging.WARNING, logger="django_perfkit.slow"):
        PerfkitMiddleware(busy_view)(RequestFactory().get("/busy/"))
    assert not [r for r in caplog.records if r.name == "django_perfkit.slow"]


@pytest.mark.django_db(transaction=True)
async def test_a_token_profiles_an_async_view_under_asgi(settings: Any) -> None:
    from asgiref.sync import sync_to_async

    profiler(settings)
    staff = await sync_to_async(User.objects.create_user)("async-alice", is_staff=True)
    middleware = PerfkitMiddleware(async_busy_view)
    token = make_token(staff, 60)
    request = RequestFactory().get(
        "/busy/", HTTP_X_PERFKIT_PROFILE=token, REMOTE_ADDR="203.0.113.7"
    )
    response = await middleware(request)
    text = await sync_to_async(stored_functions)(response["X-Perfkit-Profile-Id"])
    assert "marker_function_for_the_profile" in text


@pytest.mark.django_db(transaction=True)
async def test_a_sync_view_under_asgi_shows_its_own_frames(settings: Any) -> None:
    """Django runs a sync view in a worker thread, which the event loop's profiler
    does not sample: the view's own functions must still be in the profile."""
    from asgiref.sync import sync_to_async
    from django.test import AsyncClient

    profiler(settings)
    staff = await sync_to_async(User.objects.create_user)("asgi-alice", is_staff=True)
    token = make_token(staff, 60)
    response = await AsyncClient().get("/articles/", headers={"X-Perfkit-Profile": token})
    assert response.status_code == 200
    text = await sync_to_async(stored_functions)(response["X-Perfkit-Profile-Id"])
    # pyinstrument's frame ids: "function\0file\0line"; the view ran in the thread.
    assert "article_list\\u0000" in text
    # Without the view's thread, the profile would hold only the event loop's frames.
    data = await sync_to_async(load_profile)(response["X-Perfkit-Profile-Id"])
    assert data is not None and data["meta"]["path"] == "/articles/"


urlpatterns = [path("busy/async/", async_busy_view)]


@pytest.mark.urls(__name__)
def test_an_async_view_under_wsgi_shows_its_own_frames(settings: Any, staff: User) -> None:
    """Under WSGI Django runs an async view on an event loop in a thread of its
    own, which the request thread's profiler does not sample."""
    profiler(settings)
    response = Client().get("/busy/async/", HTTP_X_PERFKIT_PROFILE=make_token(staff, 60))
    assert response.status_code == 200 and response.content == b"ok"
    profile_id = response["X-Perfkit-Profile-Id"]
    text = stored_functions(profile_id)
    assert "async_busy_view\\u0000" in text
    assert "marker_function_for_the_profile\\u0000" in text
    data = load_profile(profile_id)
    assert data is not None
    # The request's duration, not the two threads' durations added up.
    assert data["meta"]["duration_ms"] < data["session"]["duration"] * 1000


@pytest.mark.urls(__name__)
def test_an_async_view_under_wsgi_is_profiled_after_an_earlier_async_view(
    settings: Any, staff: User
) -> None:
    # asgiref leaves the finished loop of an earlier async_to_sync in the
    # thread-local of the thread that ran its sync_to_async code (here, and in a
    # WSGI worker, the request thread): a closed loop is not the server's loop.
    import asyncio
    import os

    from asgiref.sync import SyncToAsync

    profiler(settings)
    stale = asyncio.new_event_loop()
    stale.close()
    local = SyncToAsync.threadlocal
    saved = {
        name: getattr(local, name, None) for name in ("main_event_loop", "main_event_loop_pid")
    }
    local.main_event_loop, local.main_event_loop_pid = stale, os.getpid()
    try:
        response = Client().get("/busy/async/", HTTP_X_PERFKIT_PROFILE=make_token(staff, 60))
    finally:
        for name, value in saved.items():
            setattr(local, name, value)
    text = stored_functions(response["X-Perfkit-Profile-Id"])
    assert "marker_function_for_the_profile\\u0000" in text


def test_an_async_view_under_wsgi_is_profiled_through_a_session_too(
    settings: Any, staff: User
) -> None:
    # The demo's async JSON API, signed in: the profile starts at the view.
    profiler(settings)
    client = Client()
    client.force_login(staff)
    response = client.get("/api/articles/async/", HTTP_X_PERFKIT_PROFILE="1")
    assert response.status_code == 200
    assert "api_articles_async\\u0000" in stored_functions(response["X-Perfkit-Profile-Id"])


def test_an_unprofiled_async_view_under_wsgi_is_not_pinned_to_a_thread(settings: Any) -> None:
    from asgiref.sync import AsyncToSync

    profiler(settings)
    seen: list[object] = []

    async def view(request: HttpRequest) -> HttpResponse:
        seen.append(AsyncToSync.async_single_thread_context.get(None))
        return HttpResponse("ok")

    middleware = PerfkitMiddleware(lambda request: HttpResponse())

    def get_response(request: HttpRequest) -> HttpResponse:
        from asgiref.sync import async_to_sync

        assert middleware.process_view(request, view, (), {}) is None
        return async_to_sync(view)(request)

    middleware.get_response = get_response
    request = RequestFactory().get("/busy/async/", HTTP_X_PERFKIT_PROFILE="1")
    request.user = AnonymousUser()
    assert middleware(request).content == b"ok"
    assert seen == [None]
    assert AsyncToSync.async_single_thread_context.get(None) is None


# --- sampled profiles of slow routes -----------------------------------------------------


def serve_routed(view: Any, path: str = "/healthz", **meta: Any) -> HttpResponse:
    """A request through the middleware with its route resolved and process_view run."""
    from django.urls import resolve

    middleware = PerfkitMiddleware(lambda request: HttpResponse())

    def get_response(request: HttpRequest) -> HttpResponse:
        answer = middleware.process_view(request, view, (), {})
        return answer if answer is not None else view(request)

    middleware.get_response = get_response
    request = RequestFactory().get(path, **meta)
    request.resolver_match = resolve(path)
    request.user = AnonymousUser()
    response: HttpResponse = middleware(request)
    return response


def slow_view(request: HttpRequest) -> HttpResponse:
    """Slow by its record, not by the clock: the outcome cannot depend on this machine."""
    record = current_record()
    assert record is not None
    record.started -= 10  # ten seconds ago
    return busy_view(request)


def test_a_slow_route_is_sampled_and_kept_only_when_slow_again(settings: Any) -> None:
    profiler(settings, SLOW_REQUEST_MS=5000, SAMPLE_SLOW=1)
    fast = lambda request: HttpResponse("fast")  # noqa: E731
    first = serve_routed(slow_view)  # slow: the route is noted, but nothing was profiled
    assert recent_slow_requests()[0]["profile_id"] is None
    serve_routed(fast)  # sampled, but fast: dropped
    assert recent_profiles() == []
    second = serve_routed(slow_view)  # sampled and slow: kept, linked from its record
    kept = recent_slow_requests()[0]
    assert kept["profile_id"] is not None
    assert "marker_function_for_the_profile" in stored_functions(kept["profile_id"])
    (listed,) = recent_profiles()
    assert listed["who"] == "sample:healthz"
    # Nobody asked for it: the client is told nothing.
    for response in (first, second):
        assert "X-Perfkit-Profile-Id" not in response
        assert "profile" not in response.get("Server-Timing", "")


def test_sampling_takes_one_in_n_and_respects_min_interval(settings: Any) -> None:
    profiler(settings, SLOW_REQUEST_MS=5000, SAMPLE_SLOW=2)
    serve_routed(slow_view)  # notes the route
    for _ in range(4):
        serve_routed(slow_view)
    assert len(recent_profiles()) == 2  # 1 in 2 of the next 4
    settings.PERFKIT["PROFILER"]["MIN_INTERVAL"] = 60
    from django_perfkit.conf import reset

    reset()
    for _ in range(4):
        serve_routed(slow_view)
    assert len(recent_profiles()) == 3  # then one per MIN_INTERVAL per route


def test_a_request_profiled_on_the_header_is_not_sampled_as_well(
    settings: Any, staff: User
) -> None:
    import sys

    profiler(settings, SLOW_REQUEST_MS=5000, SAMPLE_SLOW=1)
    serve_routed(slow_view)  # notes the route
    response = serve_routed(slow_view, HTTP_X_PERFKIT_PROFILE=make_token(staff, 60))
    (listed,) = recent_profiles()  # the caller's, and no second one
    assert listed["who"] == f"user:{staff.pk}"
    assert response["X-Perfkit-Profile-Id"]
    assert sys.getprofile() is None  # no profiler left running on this thread


def test_sampling_is_off_by_default(settings: Any) -> None:
    profiler(settings, SLOW_REQUEST_MS=5000)
    for _ in range(3):
        serve_routed(slow_view)
    assert recent_profiles() == []
