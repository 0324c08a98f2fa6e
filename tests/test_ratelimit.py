from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import django
import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory, override_settings
from django.utils.decorators import method_decorator
from django.views import View
from django_ratelimit.exceptions import Ratelimited as DjangoRatelimited

import django_perfkit
from django_perfkit import ratelimit
from django_perfkit.middleware import PerfkitMiddleware
from django_perfkit.ratelimit import UNSAFE, Ratelimited, get_usage, is_ratelimited, peek, reset
from django_perfkit.ratelimit.client import client_ip
from django_perfkit.ratelimit.rates import InvalidRate, parse_rate
from django_perfkit.record import record_request
from tests.redis_servers import BlackHole, PrivateRedis
from tests.settings import KEY_PREFIX

rf = RequestFactory()


def get(path: str = "/", ip: str = "10.0.0.1", **extra: Any) -> HttpRequest:
    request = rf.get(path, REMOTE_ADDR=ip, **extra)
    request.user = AnonymousUser()
    return request


def post(path: str = "/", ip: str = "10.0.0.1", data: Any = None, **extra: Any) -> HttpRequest:
    request = rf.post(path, data or {}, REMOTE_ADDR=ip, **extra)
    request.user = AnonymousUser()
    return request


def ok(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def served(view: Any, request: HttpRequest) -> HttpResponse:
    """Through PerfkitMiddleware, as a real request: Ratelimited becomes a 429."""

    def get_response(req: HttpRequest) -> HttpResponse:
        try:
            return view(req)
        except Exception as exc:
            response = mw.process_exception(req, exc)
            if response is None:
                raise
            return response

    mw = PerfkitMiddleware(get_response)
    return mw(request)


# -- rates and identity -------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "expected"),
    [("5/m", (5, 60)), ("100/10s", (100, 10)), ("1000/d", (1000, 86400)), ("10/5m", (10, 300)),
     ("3/h", (3, 3600)), ("7/30", (7, 30)), ("0/s", (0, 1)), ((4, 9), (4, 9))],
)  # fmt: skip
def test_rates_django_ratelimit_accepts(rate: Any, expected: tuple[int, int]) -> None:
    assert parse_rate(rate) == expected


@pytest.mark.parametrize("rate", ["5", "5/x", "abc", "-1/m", "5/0s", 5, (1, 0)])
def test_malformed_rates(rate: Any) -> None:
    with pytest.raises(InvalidRate):
        parse_rate(rate)


def test_spoofed_forwarded_for_changes_nothing_without_trusted_proxies() -> None:
    request = get(ip="203.0.113.7", HTTP_X_FORWARDED_FOR="1.2.3.4")
    assert client_ip(request) == "203.0.113.7"


@override_settings(PERFKIT={"KEY_PREFIX": KEY_PREFIX, "TRUSTED_PROXIES": ["10.0.0.0/8"]})
def test_trusted_proxies_walk_forwarded_for_from_the_right() -> None:
    # client -> (spoofs 6.6.6.6) -> our proxy 10.1.1.1 -> our proxy 10.2.2.2 -> app
    request = get(ip="10.2.2.2", HTTP_X_FORWARDED_FOR="6.6.6.6, 198.51.100.4, 10.1.1.1")
    assert client_ip(request) == "198.51.100.4"
    # A direct, untrusted peer cannot use the header at all.
    request = get(ip="198.51.100.9", HTTP_X_FORWARDED_FOR="10.1.1.1")
    assert client_ip(request) == "198.51.100.9"


@override_settings(PERFKIT={"KEY_PREFIX": KEY_PREFIX, "TRUSTED_PROXIES": ["10.0.0.0/8"]})
@pytest.mark.parametrize(
    "header", ["garbage, !!, \x00", "1.2.3.4," * 5000, "", ", , ,", "999.1.1.1"]
)
def test_garbage_and_oversized_forwarded_for_are_bounded(header: str) -> None:
    request = get(ip="10.0.0.5", HTTP_X_FORWARDED_FOR=header)
    ip = client_ip(request)
    assert ip in ("10.0.0.5", "1.2.3.4")


def test_ipv6_grouped_by_64_and_ipv4_mapped_normalised() -> None:
    assert client_ip(get(ip="2001:db8:1:2:aaaa::1")) == "2001:db8:1:2::/64"
    assert client_ip(get(ip="2001:db8:1:2:bbbb::9")) == "2001:db8:1:2::/64"
    assert client_ip(get(ip="::ffff:192.0.2.5")) == "192.0.2.5"
    with override_settings(PERFKIT={"KEY_PREFIX": KEY_PREFIX, "RATELIMIT_IPV6_MASK": 128}):
        assert client_ip(get(ip="2001:db8:1:2:aaaa::1")) == "2001:db8:1:2:aaaa::1"


# -- the decorator -----------------------------------------------------------------------


def test_import_path_gives_the_decorator() -> None:
    assert callable(django_perfkit.ratelimit)
    assert issubclass(Ratelimited, DjangoRatelimited)


def test_sync_view_gets_429_with_headers_after_the_limit() -> None:
    view = ratelimit(key="ip", rate="3/m")(ok)
    statuses = [served(view, get()).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    response = served(view, get())
    assert response.status_code == 429
    assert int(response["Retry-After"]) >= 1
    assert response["RateLimit-Policy"] == '"3-per-60s";q=3;w=60'
    assert response["RateLimit"].startswith('"3-per-60s";r=0;t=')
    assert response["Content-Type"].startswith("text/plain")
    # Another client has its own budget.
    assert served(view, get(ip="10.0.0.2")).status_code == 200


def test_json_clients_get_problem_json() -> None:
    view = ratelimit(key="ip", rate="1/m")(ok)
    served(view, get())
    response = served(view, get(HTTP_ACCEPT="application/json"))
    assert response.status_code == 429
    assert response["Content-Type"] == "application/problem+json"
    body = json.loads(response.content)
    assert body["status"] == 429
    assert "quota-exceeded" in body["type"]


def test_legacy_headers_and_headers_on_allowed_responses() -> None:
    view = ratelimit(key="ip", rate="2/m", headers=True)(ok)
    with override_settings(PERFKIT={"KEY_PREFIX": KEY_PREFIX, "RATELIMIT_LEGACY_HEADERS": True}):
        response = served(view, get())
    assert response.status_code == 200
    assert response["RateLimit"].startswith('"2-per-60s";r=1;')
    assert response["X-RateLimit-Limit"] == "2"
    assert response["X-RateLimit-Remaining"] == "1"
    assert "Retry-After" not in response


def test_no_headers_on_allowed_responses_by_default() -> None:
    response = served(ratelimit(key="ip", rate="2/m")(ok), get())
    assert "RateLimit" not in response


def test_block_false_sets_request_limited_and_usage() -> None:
    seen: list[tuple[bool, dict[str, Any]]] = []

    @ratelimit(key="ip", rate="1/m", block=False)
    def view(request: HttpRequest) -> HttpResponse:
        seen.append((request.limited, request.ratelimit))  # type: ignore[attr-defined]
        return HttpResponse()

    view(get())
    view(get())
    assert [limited for limited, _ in seen] == [False, True]
    assert seen[1][1]["limit"] == 1 and seen[1][1]["should_limit"] is True


async def test_async_view_is_limited_without_a_thread() -> None:
    calls = 0

    @ratelimit(key="ip", rate="2/m")
    async def view(request: HttpRequest) -> HttpResponse:
        nonlocal calls
        calls += 1
        return HttpResponse()

    import asyncio

    assert asyncio.iscoroutinefunction(view)
    await view(get())
    await view(get())
    with pytest.raises(Ratelimited) as info:
        await view(get())
    assert calls == 2
    assert info.value.usage["should_limit"] is True
    from django_perfkit.redis import get_gateway

    await get_gateway().aclose()


def test_class_based_view_with_method_decorator() -> None:
    class Search(View):
        @method_decorator(ratelimit(key="ip", rate="1/m", method="GET"))
        def get(self, request: HttpRequest) -> HttpResponse:
            return HttpResponse("results")

    view = Search.as_view()
    assert served(view, get()).status_code == 200
    assert served(view, get()).status_code == 429


def test_method_filter_and_unsafe() -> None:
    view = ratelimit(key="ip", rate="1/m", method=UNSAFE)(ok)
    for _ in range(3):
        assert served(view, get()).status_code == 200  # GET is not limited
    assert served(view, post()).status_code == 200
    assert served(view, post()).status_code == 429


def test_stacked_limits_burst_and_sustained() -> None:
    # django-ratelimit's documented pattern: the tighter limit wins.
    view = ratelimit(key="ip", rate="2/s", group="g-burst")(
        ratelimit(key="ip", rate="100/h", group="g-sustained")(ok)
    )
    codes = [served(view, get()).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_callable_rate_none_means_no_limit_for_staff() -> None:
    def rate(group: str, request: HttpRequest) -> str | None:
        return None if request.META.get("HTTP_X_STAFF") else "1/m"

    view = ratelimit(key="ip", rate=rate)(ok)
    for _ in range(3):
        assert served(view, get(HTTP_X_STAFF="1")).status_code == 200
    assert served(view, get()).status_code == 200
    assert served(view, get()).status_code == 429


def test_group_shares_the_budget_between_views() -> None:
    a = ratelimit(key="ip", rate="2/m", group="shared")(ok)
    b = ratelimit(key="ip", rate="2/m", group="shared")(ok)
    assert [served(a, get()).status_code, served(b, get()).status_code] == [200, 200]
    assert served(a, get()).status_code == 429


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"rate": "5/x"}, "malformed"), ({"rate": "5/m", "key": "nope"}, "unknown key"),
     ({"rate": "5/m", "algorithm": "leaky"}, "algorithm"),
     ({"rate": "5/m", "fail": "maybe"}, "fail"),
     ({"rate": "5/m", "method": 5}, "method"), ({"rate": "5/m", "cost": -1}, "cost"),
     ({"rate": "5/m", "key": "header:"}, "names no header")],
)  # fmt: skip
def test_bad_arguments_fail_at_decoration_naming_the_view(kwargs: Any, message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message) as info:
        ratelimit(**kwargs)(ok)
    assert "tests.test_ratelimit.ok" in str(info.value)


def test_keys_user_header_get_post() -> None:
    user = User(pk=42, username="u")
    request = get()
    request.user = user
    assert get_usage(request, group="k", key="user", rate="5/m", increment=True)["count"] == 1
    other = get()
    other.user = User(pk=43, username="v")
    assert get_usage(other, group="k", key="user", rate="5/m", increment=True)["count"] == 1
    h1 = get(HTTP_X_API_KEY="abc")
    assert (
        get_usage(h1, group="h", key="header:x-api-key", rate="5/m", increment=True)["count"] == 1
    )
    assert (
        get_usage(h1, group="h", key="header:x-api-key", rate="5/m", increment=True)["count"] == 2
    )
    q = get("/?q=x")
    assert get_usage(q, group="q", key="get:q", rate="5/m", increment=True)["count"] == 1
    p = post(data={"username": "alice"})
    assert get_usage(p, group="p", key="post:username", rate="5/m", increment=True)["count"] == 1
    d = get()
    usage = get_usage(
        d, group="d", key="tests.test_ratelimit.fixed_key", rate="5/m", increment=True
    )
    assert usage["count"] == 1


def fixed_key(group: str, request: HttpRequest) -> str:
    return "always-the-same"


def test_usage_functions_peek_reset() -> None:
    request = get()
    args = {"group": "api", "key": "ip", "rate": "2/m"}
    assert peek(request, **args)["count"] == 0  # nothing counted yet
    assert is_ratelimited(request, increment=True, **args) is False
    assert is_ratelimited(request, increment=True, **args) is False
    usage = peek(request, **args)
    # Two counted; the sliding window does not count rejected requests, so a
    # peek says whether the next request would pass.
    assert usage["count"] == 2
    assert usage["should_limit"] is True and usage["remaining"] == 0
    assert usage["time_left"] >= 1
    assert is_ratelimited(request, increment=True, **args) is True
    assert reset(request, group="api", key="ip", rate="2/m") is True
    assert is_ratelimited(request, increment=True, **args) is False
    with pytest.raises(ImproperlyConfigured, match="group or a fn"):
        get_usage(request, key="ip", rate="1/m")


def test_cost_weights_a_request() -> None:
    view = ratelimit(key="ip", rate="10/m", cost=4)(ok)
    codes = [served(view, get()).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_zero_rate_blocks_everything() -> None:
    assert served(ratelimit(key="ip", rate="0/s")(ok), get()).status_code == 429


def test_ratelimit_enable_false_turns_everything_off() -> None:
    view = ratelimit(key="ip", rate="1/m")(ok)
    with override_settings(PERFKIT={"KEY_PREFIX": KEY_PREFIX, "RATELIMIT_ENABLE": False}):
        assert [served(view, get()).status_code for _ in range(3)] == [200, 200, 200]


def test_decisions_land_in_the_request_record() -> None:
    view = ratelimit(key="ip", rate="1/m", group="recorded")(ok)
    with record_request() as rec:
        view(get())
    with record_request() as rec2, pytest.raises(Ratelimited):
        view(get())
    (first,) = rec.ratelimits
    (second,) = rec2.ratelimits
    assert (first.group, first.limited, first.remaining) == ("recorded", False, 0)
    assert second.limited is True and second.failed is False


def ratelimited_view(request: HttpRequest, exception: Exception) -> HttpResponse:
    return HttpResponse("slow down", status=429)


def test_ratelimit_view_setting_renders_the_response() -> None:
    view = ratelimit(key="ip", rate="1/m")(ok)
    served(view, get())
    with override_settings(
        PERFKIT={
            "KEY_PREFIX": KEY_PREFIX,
            "RATELIMIT_VIEW": "tests.test_ratelimit.ratelimited_view",
        }
    ):
        response = served(view, get())
    assert response.content == b"slow down"


# -- algorithms ------------------------------------------------------------------------


def _align_to_second() -> None:
    # Start just after a window boundary on Redis's clock (the scripts use it).
    client = redis.Redis.from_url(settings.REDIS_URL)
    seconds, micros = client.time()
    client.close()
    time.sleep(1 - micros / 1e6 + 0.02)


# GCRA allows a burst of `limit` once the client has been idle, then the
# sustained rate: 1 + 9 at +0.90 s + 2 more by +1.03 s = 12. That is its
# definition (burst tolerance = one period), documented; sliding stays at 11.
@pytest.mark.parametrize(("algorithm", "most"), [("sliding", 11), ("gcra", 12)])
def test_edge_burst_is_bounded(algorithm: str, most: int) -> None:
    """Limit 10/s; 1 request at the window start, 9 at +0.90 s, 10 at +1.03 s."""
    group = f"edge-{algorithm}"

    def hit() -> bool:
        return not is_ratelimited(get(), group=group, key="ip", rate="10/s",
                                  increment=True, algorithm=algorithm)  # fmt: skip

    _align_to_second()
    start = time.monotonic()
    allowed = int(hit())
    time.sleep(max(0, 0.90 - (time.monotonic() - start)))
    allowed += sum(hit() for _ in range(9))
    time.sleep(max(0, 1.03 - (time.monotonic() - start)))
    allowed += sum(hit() for _ in range(10))
    assert allowed <= most


def test_fixed_window_lets_the_edge_burst_through() -> None:
    # What the sliding window fixes: django-ratelimit's fixed window lets ~2x through.
    def hit() -> bool:
        return not is_ratelimited(get(), group="edge-fixed", key="ip", rate="10/s",
                                  increment=True, algorithm="fixed")  # fmt: skip

    _align_to_second()
    start = time.monotonic()
    allowed = int(hit())
    time.sleep(max(0, 0.90 - (time.monotonic() - start)))
    allowed += sum(hit() for _ in range(9))
    time.sleep(max(0, 1.03 - (time.monotonic() - start)))
    allowed += sum(hit() for _ in range(10))
    assert allowed > 11


@pytest.mark.parametrize("algorithm", ["sliding", "gcra", "fixed"])
def test_exact_under_concurrency(algorithm: str) -> None:
    allowed = 0
    lock = threading.Lock()

    def worker() -> None:
        nonlocal allowed
        for _ in range(50):
            if not is_ratelimited(get(), group=f"conc-{algorithm}", key="ip", rate="100/d",
                                  increment=True, algorithm=algorithm):  # fmt: skip
                with lock:
                    allowed += 1

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert allowed == 100


def test_sliding_window_is_a_hard_cap_over_any_period() -> None:
    """10 per 2 s, counted in tenths (0.2 s). 1.9 s after a full burst nothing
    passes, whatever the burst's place in its window (a two-window counter that
    weights the previous window by its overlap lets up to 9 more through when
    the burst came late in its window); once the tenth the burst was in has
    left the window (at most 2.2 s after it), a full burst passes again."""
    args = {"group": "slide-cap", "key": "ip", "rate": "10/2s"}
    started = time.monotonic()
    first = [not is_ratelimited(get(), increment=True, **args) for _ in range(11)]
    time.sleep(max(0, 1.9 - (time.monotonic() - started)))
    usage = get_usage(get(), increment=False, **args)
    second = [not is_ratelimited(get(), increment=True, **args) for _ in range(5)]
    time.sleep(max(0, 2.35 - (time.monotonic() - started)))
    third = [not is_ratelimited(get(), increment=True, **args) for _ in range(11)]
    assert first == [True] * 10 + [False]
    assert second == [False] * 5
    assert usage is not None
    assert (usage["should_limit"], usage["count"], usage["remaining"]) == (True, 10, 0)
    assert usage["time_left"] == 1  # the burst's tenth leaves within 0.1-0.3 s
    assert third == [True] * 10 + [False]


def test_sliding_window_script_tolerates_a_hash_of_another_form() -> None:
    # A key left by the earlier two-window counter (fields w, c, p): not read
    # as tenths (no Lua error, which would hand the decision to the fail
    # policy), but dropped, and counting starts afresh.
    from django_perfkit.ratelimit.scripts import SLIDING
    from django_perfkit.redis import get_gateway

    gateway = get_gateway()
    key = gateway.key("rl", "old-form")
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.hset(key, mapping={"w": 1, "c": 5, "p": 3})
    reply = gateway.run_script(SLIDING, [key], ["10 60 1 1"], None)
    fields = client.hkeys(key)
    client.close()
    assert reply is not None and reply.split()[:3] == [b"1", b"1", b"9"]
    assert len(fields) == 1 and fields[0].isdigit()


def test_sliding_window_lets_a_client_back_in_as_it_slides() -> None:
    request = get()
    args = {"group": "slide", "key": "ip", "rate": "2/1s", "increment": True}
    assert not is_ratelimited(request, **args)
    assert not is_ratelimited(request, **args)
    assert is_ratelimited(request, **args)
    time.sleep(2.1)  # two windows later nothing is left
    assert not is_ratelimited(request, **args)


# -- Redis unreachable -----------------------------------------------------------------


@pytest.fixture
def dead_redis() -> Iterator[str]:
    private = PrivateRedis()
    private.start()
    url = private.url
    private.stop()
    yield url


@pytest.fixture
def black_hole() -> Iterator[str]:
    hole = BlackHole()
    yield hole.url
    hole.close()


@pytest.mark.parametrize("where", ["dead_redis", "black_hole"])
def test_fail_open_lets_requests_through(where: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue(where)
    view = ratelimit(key="ip", rate="1/m")(ok)
    with override_settings(PERFKIT={"KEY_PREFIX": KEY_PREFIX, "REDIS_URL": url}):
        started = time.monotonic()
        with record_request() as rec:
            codes = [view(get()).status_code for _ in range(5)]
        elapsed = time.monotonic() - started
    assert codes == [200] * 5
    assert all(d.failed for d in rec.ratelimits)
    assert rec.redis_failures == 5
    assert elapsed < 2.0  # a few 50 ms timeouts, then the breaker: never seconds each


@pytest.mark.parametrize("where", ["dead_redis", "black_hole"])
def test_fail_closed_answers_503_with_retry_after(
    where: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue(where)
    view = ratelimit(key="ip", rate="100/m", fail="closed")(ok)
    with override_settings(PERFKIT={"KEY_PREFIX": KEY_PREFIX, "REDIS_URL": url}):
        response = served(view, get())
    assert response.status_code == 503
    assert int(response["Retry-After"]) >= 1


# -- route rules -----------------------------------------------------------------------------


RULES = [
    {"path": "/api/", "rate": "2/m", "key": "ip", "method": "GET"},
    {"path": "/login/", "rate": "1/m", "key": "post:username", "method": "POST"},
]


@pytest.mark.django_db
@override_settings(PERFKIT={"KEY_PREFIX": KEY_PREFIX, "RATELIMITS": RULES})
def test_route_rules_limit_before_the_view(client: Any, django_assert_num_queries: Any) -> None:
    assert client.get("/api/articles/").status_code == 200
    assert client.get("/api/articles/").status_code == 200
    with django_assert_num_queries(0):  # no database work for a limited request
        response = client.get("/api/articles/", HTTP_ACCEPT="application/json")
    assert response.status_code == 429
    assert response["Content-Type"] == "application/problem+json"
    assert "RateLimit-Policy" in response
    assert client.get("/search/?q=a").status_code == 200  # other paths untouched


@pytest.mark.django_db
@override_settings(PERFKIT={"KEY_PREFIX": KEY_PREFIX, "RATELIMITS": RULES})
def test_route_rule_on_login_posts_per_username(client: Any) -> None:
    assert client.post("/login/", {"username": "alice", "password": "x"}).status_code == 200
    assert client.post("/login/", {"username": "alice", "password": "x"}).status_code == 429
    assert client.post("/login/", {"username": "bob", "password": "x"}).status_code == 200
    assert client.get("/login/").status_code == 200


@pytest.mark.django_db(transaction=True)
@override_settings(PERFKIT={"KEY_PREFIX": KEY_PREFIX, "RATELIMITS": RULES})
async def test_route_rules_under_asgi(async_client: Any) -> None:
    codes = [(await async_client.get("/api/articles/async/")).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    from django_perfkit.redis import get_gateway

    await get_gateway().aclose()


# -- DRF ----------------------------------------------------------------------------------


def test_drf_throttle() -> None:
    pytest.importorskip("rest_framework")
    from rest_framework.request import Request

    from django_perfkit.ratelimit import PerfkitThrottle

    class Throttle(PerfkitThrottle):
        rate = "2/m"
        scope = "drf-test"
        key = "ip"

    results = []
    for _ in range(3):
        throttle = Throttle()
        results.append(throttle.allow_request(Request(get()), view=None))
    assert results == [True, True, False]
    assert throttle.wait() is not None and throttle.wait() >= 1


# -- the demo site's hot routes -----------------------------------------------------------


@pytest.mark.django_db
@override_settings(NEWS_RATELIMITS={"api": "2/m", "search": "1/m", "login-user": "1/m"})
def test_demo_routes_are_limited(client: Any) -> None:
    # The JSON API: the sync view and its async twin share the "news.api" group.
    # The async view served by the WSGI test client runs on a loop that lives
    # for one request (async_to_sync), which the gateway handles too.
    assert client.get("/api/articles/").status_code == 200
    assert client.get("/api/articles/async/").status_code == 200
    response = client.get("/api/articles/async/", HTTP_ACCEPT="application/json")
    assert response.status_code == 429
    assert "RateLimit" in response and "Retry-After" in response
    assert client.get("/search/?q=a").status_code == 200
    assert client.get("/search/?q=a").status_code == 429
    assert client.post("/login/", {"username": "eve", "password": "x"}).status_code == 200
    assert client.post("/login/", {"username": "eve", "password": "y"}).status_code == 429


@pytest.mark.django_db
@override_settings(NEWS_RATELIMITS={})
def test_demo_limits_can_be_lifted(client: Any) -> None:
    assert all(client.get("/search/?q=a").status_code == 200 for _ in range(40))


@pytest.mark.skipif(django.VERSION < (5, 0), reason="AsyncClient.aforce_login is Django 5.0+")
@pytest.mark.django_db(transaction=True)
@override_settings(
    PERFKIT={
        "KEY_PREFIX": KEY_PREFIX,
        "RATELIMITS": [{"path": "/api/articles/async/", "rate": "1/m", "key": "user"}],
    }
)
async def test_user_key_under_asgi_loads_the_user_off_the_loop(async_client: Any) -> None:
    # request.user is lazy; reading it on the event loop would raise
    # SynchronousOnlyOperation. Each user has their own budget.
    alice = await User.objects.acreate(username="alice-async")
    bob = await User.objects.acreate(username="bob-async")
    await async_client.aforce_login(alice)
    assert (await async_client.get("/api/articles/async/")).status_code == 200
    assert (await async_client.get("/api/articles/async/")).status_code == 429
    await async_client.aforce_login(bob)
    assert (await async_client.get("/api/articles/async/")).status_code == 200


def test_fixed_window_peek_has_django_ratelimit_semantics() -> None:
    # django-ratelimit: after 5 of 5/m, increment=False reports count=5 and not
    # limited; the 6th counted request is limited; time_left is the window's rest.
    request = get()
    args = {"group": "compat", "key": "ip", "rate": "5/m", "algorithm": "fixed"}
    for _ in range(5):
        assert not is_ratelimited(request, increment=True, **args)
    usage = get_usage(request, **args)
    assert (usage["count"], usage["should_limit"]) == (5, False)
    assert 0 < usage["time_left"] <= 60
    assert is_ratelimited(request, increment=True, **args)


def test_django_ratelimit_spellings_and_settings() -> None:
    view = ratelimit(key="ip", rate="1/min")(ok)  # django-ratelimit and DRF accept words
    assert served(view, get()).status_code == 200
    assert served(view, get()).status_code == 429
    dotted = ratelimit(key="ip", rate="tests.test_ratelimit.one_per_minute")(ok)
    assert [served(dotted, get(ip="10.9.9.9")).status_code for _ in range(2)] == [200, 429]
    with override_settings(RATELIMIT_ENABLE=False):  # django-ratelimit's own switch
        assert served(view, get()).status_code == 200
    assert ratelimit.ALL is not None and django_perfkit.ratelimit.UNSAFE is not None


def one_per_minute(group: str, request: HttpRequest) -> str:
    return "1/m"


def test_key_types_do_not_share_a_bucket() -> None:
    # A username that looks like an IP address must not use up that IP's budget.
    by_ip = ratelimit(key="ip", rate="2/m", group="login")(ok)
    by_name = ratelimit(key="post:username", rate="2/m", group="login")(ok)
    for _ in range(3):
        served(by_name, post(ip="198.51.100.1", data={"username": "10.0.0.1"}))
    assert served(by_ip, post(ip="10.0.0.1")).status_code == 200


def test_cost_above_the_limit_is_refused_at_declaration() -> None:
    with pytest.raises(ImproperlyConfigured, match="more than the whole limit"):
        ratelimit(key="ip", rate="5/m", cost=6)(ok)


def test_plain_ratelimited_exception_still_gets_a_429() -> None:
    def view(request: HttpRequest) -> HttpResponse:
        raise Ratelimited("legacy message")

    response = served(view, get())
    assert response.status_code == 429 and "Retry-After" in response


@pytest.mark.parametrize("reply_as_str", [True])
def test_decode_responses_clients_still_limit(reply_as_str: bool) -> None:
    url = settings.REDIS_URL + "?decode_responses=True"
    view = ratelimit(key="ip", rate="1/m")(ok)
    with override_settings(PERFKIT={"KEY_PREFIX": KEY_PREFIX, "REDIS_URL": url}):
        assert [served(view, get(ip="10.7.7.7")).status_code for _ in range(2)] == [200, 429]


def test_protocol_garbage_from_redis_fails_open_not_500() -> None:
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]

    def answer() -> None:
        for _ in range(8):
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            conn.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    view = ratelimit(key="ip", rate="1/m")(ok)
    try:
        with override_settings(
            PERFKIT={"KEY_PREFIX": KEY_PREFIX, "REDIS_URL": f"redis://127.0.0.1:{port}/0"}
        ):
            assert served(view, get()).status_code == 200
    finally:
        server.close()


# -- fixes found in review ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_blocked_decorated_views_get_429_under_asgi(async_client: Any) -> None:
    # process_exception is always called synchronously by Django: a coroutine
    # there turned every blocked request into a 500 under ASGI.
    with override_settings(NEWS_RATELIMITS={"search": "1/m"}):
        first = await async_client.get("/search/?q=a")
        second = await async_client.get("/search/?q=a")
    assert (first.status_code, second.status_code) == (200, 429)
    assert "Retry-After" in second


def test_user_set_by_another_middleware_is_kept() -> None:
    import asyncio

    from django_perfkit.users import aload_user

    request = get()
    token_user = User(pk=7, username="token-user")
    request.user = token_user  # e.g. set by a JWT middleware
    asyncio.run(aload_user(request))
    assert request.user is token_user


@pytest.mark.django_db(transaction=True)
async def test_async_view_with_a_rate_callable_reading_the_user() -> None:
    from asgiref.sync import sync_to_async
    from django.utils.functional import SimpleLazyObject

    def rate(group: str, request: HttpRequest) -> str:
        return "100/m" if request.user.is_authenticated else "1/m"

    @ratelimit(key="ip", rate=rate)
    async def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse()

    request = get()
    # A lazy user, as AuthenticationMiddleware leaves it: reading it on the loop
    # would raise SynchronousOnlyOperation.
    request.user = SimpleLazyObject(lambda: User.objects.first() or AnonymousUser())
    await view(request)
    second = get()
    second.user = SimpleLazyObject(lambda: User.objects.first() or AnonymousUser())
    with pytest.raises(Ratelimited):
        await view(second)
    await sync_to_async(lambda: None)()


@override_settings(PERFKIT={"KEY_PREFIX": KEY_PREFIX, "TRUSTED_PROXIES": ["10.0.0.0/8"]})
def test_forwarded_for_hops_with_ports() -> None:
    request = get(ip="10.0.0.5", HTTP_X_FORWARDED_FOR="198.51.100.4:5555, [2001:db8::7]:443")
    assert client_ip(request) == "2001:db8::/64"
    request = get(ip="10.0.0.5", HTTP_X_FORWARDED_FOR="198.51.100.4:5555")
    assert client_ip(request) == "198.51.100.4"


def test_unix_socket_peer_behind_a_trusted_proxy() -> None:
    request = get(ip="", HTTP_X_FORWARDED_FOR="198.51.100.8")
    assert client_ip(request) == ""  # no proxies configured: nothing to go on
    with override_settings(PERFKIT={"KEY_PREFIX": KEY_PREFIX, "TRUSTED_PROXIES": ["127.0.0.1"]}):
        assert client_ip(request) == "198.51.100.8"


def test_drf_throttle_reads_drf_rates_and_builds_once() -> None:
    pytest.importorskip("rest_framework")
    from rest_framework.request import Request
    from rest_framework.settings import api_settings

    from django_perfkit.ratelimit import PerfkitThrottle

    class Burst(PerfkitThrottle):
        scope = "burst"
        key = "ip"

    rest = {"DEFAULT_THROTTLE_RATES": {"burst": "2/day"}}  # DRF's own spelling
    with override_settings(REST_FRAMEWORK=rest):
        api_settings.reload()
        try:
            allowed = [Burst().allow_request(Request(get(ip="10.3.3.3")), None) for _ in range(3)]
            assert allowed == [True, True, False]
            assert len([k for k in PerfkitThrottle._limits if k[0] is Burst]) == 1
        finally:
            api_settings.reload()
