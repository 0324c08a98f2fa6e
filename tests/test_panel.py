"""The panel's pages, with Django's test client against PostgreSQL and Redis.

Who may see them (404 for anyone else), what they show after real traffic
through the middleware, that attacker-controlled text is escaped everywhere,
that SQL values stay hidden, and the Database page's cancel action (POST,
CSRF, confirmation, superusers only). The browser test is
tests/test_panel_browser.py; three processes adding up: tests/test_fleet.py.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.test import Client, RequestFactory
from django.urls import resolve
from django.utils.crypto import get_random_string

from django_perfkit.conf import get_settings
from django_perfkit.fleet.stats import _server_id, fleet_snapshot, recorder
from django_perfkit.middleware import PerfkitMiddleware
from django_perfkit.panel.database import blocking_chains, hide_values
from django_perfkit.panel.svg import bar_chart, sparkline
from django_perfkit.profiler import make_token
from django_perfkit.profiler.session import recent_profiles
from django_perfkit.profiler.slow import report_slow_request
from django_perfkit.record import RequestRecord
from tests.pg_sessions import lock_and_wait
from tests.redis_servers import free_port
from tests.test_demo_site import MakeArticles, make_articles  # noqa: F401  (a fixture)

PAGES = [
    "/perfkit/",
    "/perfkit/routes/",
    "/perfkit/slow/",
    "/perfkit/profiles/",
    "/perfkit/ratelimits/",
    "/perfkit/database/",
]
PROBE = "<script>window.__xss=1</script>"

pytestmark = pytest.mark.django_db


def fleet_on(settings: Any, **panel: Any) -> None:
    settings.PERFKIT = {
        **settings.PERFKIT,
        "FLEET": {"ENABLED": True},
        "PANEL": panel,
        "PROFILER": {"MIN_INTERVAL": 0},
    }


@pytest.fixture
def staff_client(client: Client) -> Client:
    client.force_login(User.objects.create_user("ops", password="pw", is_staff=True))
    return client


def cell(html: str, table_id: str, row_text: str) -> list[str]:
    """The cells' text of the first row of ``table#table_id`` that contains ``row_text``."""
    table = re.search(rf'<table id="{table_id}">(.*?)</table>', html, re.S)
    assert table, f"no table#{table_id}"
    for row in re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S):
        if row_text in row:
            cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
            return [re.sub(r"<[^>]+>", "", c).strip() for c in cells]
    raise AssertionError(f"{row_text!r} not in table#{table_id}")


# --- who may see it ---------------------------------------------------------------------


@pytest.mark.parametrize("url", [*PAGES, "/perfkit/assets/panel.css", "/perfkit/assets/panel.js"])
def test_anonymous_and_non_staff_get_404(client: Client, url: str) -> None:
    assert client.get(url).status_code == 404
    client.force_login(User.objects.create_user("reader", password="pw"))
    assert client.get(url).status_code == 404


@pytest.mark.parametrize("url", PAGES)
def test_staff_see_every_page_private_and_unframed(
    settings: Any, staff_client: Client, url: str
) -> None:
    fleet_on(settings)
    response = staff_client.get(url)
    assert response.status_code == 200
    assert response["Cache-Control"] == "private, no-store"
    assert response["X-Frame-Options"] == "DENY"
    assert b'<main data-refresh="5">' in response.content


def test_a_configured_permission_replaces_staff(settings: Any, client: Client) -> None:
    fleet_on(settings, PERMISSION="auth.view_user")
    staff = User.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(staff)
    assert client.get("/perfkit/").status_code == 404
    holder = User.objects.create_user("holder", password="pw")
    holder.user_permissions.add(Permission.objects.get(codename="view_user"))
    client.force_login(holder)
    assert client.get("/perfkit/").status_code == 200
    holder.is_active = False
    holder.save()
    client.force_login(holder)
    assert client.get("/perfkit/").status_code == 404


# --- what it shows ----------------------------------------------------------------------


def test_overview_and_routes_show_the_traffic(settings: Any, staff_client: Client) -> None:
    fleet_on(settings)
    for _ in range(3):
        assert staff_client.get("/articles/").status_code == 200
    assert staff_client.get("/healthz").status_code == 200
    assert recorder.flush()
    html = staff_client.get("/perfkit/?minutes=5").content.decode()
    assert _server_id() in cell(html, "servers", _server_id())[0]
    routes = staff_client.get("/perfkit/routes/?sort=p95&minutes=5").content.decode()
    articles = cell(routes, "routes", "<code>articles/</code>")
    assert articles[1] == "3"  # requests
    assert articles[3] == "0"  # errors
    assert "<svg" in routes and "polyline" in routes
    assert "p95 ▾" in routes  # the sorted column
    only_me = staff_client.get(f"/perfkit/routes/?server={_server_id()}").content.decode()
    assert cell(only_me, "routes", "<code>articles/</code>")[1] == "3"
    nobody = staff_client.get("/perfkit/routes/?server=elsewhere:1").content.decode()
    assert "No requests in this window." in nobody


def test_in_flight_requests_are_counted_while_their_view_runs(
    settings: Any, staff_client: Client, monkeypatch: Any
) -> None:
    fleet_on(settings)
    seen: list[int] = []

    def flush_and_look(route: str) -> None:
        original_enter(route)
        assert recorder.flush()
        rows = {row["route"]: row for row in fleet_snapshot(1)["routes"]}
        seen.append(rows[route]["inflight"])

    original_enter = recorder.enter
    monkeypatch.setattr(recorder, "enter", flush_and_look)
    assert staff_client.get("/articles/").status_code == 200
    assert seen == [1]
    recorder.flush()
    rows = {row["route"]: row for row in fleet_snapshot(1)["routes"]}
    assert rows["articles/"]["inflight"] == 0
    assert rows["articles/"]["requests"] == 1


def _raising_get_response(middleware: PerfkitMiddleware) -> Any:
    def get_response(request: HttpRequest) -> HttpResponse:
        middleware.process_view(request, None, (), {})
        assert recorder._inflight == {"articles/": 1}  # counted while the view runs
        raise RuntimeError("the view failed")

    return get_response


def test_a_view_that_raises_leaves_nothing_in_flight(settings: Any) -> None:
    fleet_on(settings)
    middleware = PerfkitMiddleware(lambda request: HttpResponse())
    middleware.get_response = _raising_get_response(middleware)
    request = RequestFactory().get("/articles/")
    request.resolver_match = resolve("/articles/")
    with pytest.raises(RuntimeError, match="the view failed"):
        middleware(request)
    assert recorder._inflight == {}


async def test_under_asgi_a_failure_after_the_view_leaves_nothing_in_flight(
    settings: Any, monkeypatch: Any
) -> None:
    fleet_on(settings)
    settings.PERFKIT["SERVER_TIMING"] = "staff"  # the user is loaded after the view

    async def view_chain(request: HttpRequest) -> HttpResponse:
        await middleware.process_view(request, None, (), {})
        assert recorder._inflight == {"articles/": 1}
        return HttpResponse()

    async def user_loading_fails(request: HttpRequest) -> None:
        raise ConnectionError("the database went away")

    middleware = PerfkitMiddleware(view_chain)
    monkeypatch.setattr("django_perfkit.middleware.aload_user", user_loading_fails)
    request = RequestFactory().get("/articles/")
    request.resolver_match = resolve("/articles/")
    with pytest.raises(ConnectionError):
        await middleware(request)
    assert recorder._inflight == {}


def test_the_panels_own_requests_are_not_in_flight(
    settings: Any, staff_client: Client, monkeypatch: Any
) -> None:
    fleet_on(settings)
    entered: list[str] = []
    monkeypatch.setattr(recorder, "enter", entered.append)
    staff_client.get("/perfkit/routes/")
    staff_client.get("/healthz")
    assert entered == ["healthz"]


def test_rate_limits_page_counts_blocked_requests_per_group(
    settings: Any, staff_client: Client
) -> None:
    fleet_on(settings)
    settings.NEWS_RATELIMITS = {**settings.NEWS_RATELIMITS, "api": "2/m"}
    statuses = [staff_client.get("/api/articles/").status_code for _ in range(5)]
    assert statuses.count(429) == 3
    assert recorder.flush()
    html = staff_client.get("/perfkit/ratelimits/").content.decode()
    checked, blocked = cell(html, "ratelimit-groups", "news.api")[1:3]
    assert (checked, blocked) == ("5", "3")


def test_slow_requests_show_record_queries_and_nplusone(
    settings: Any,
    staff_client: Client,
    make_articles: MakeArticles,  # noqa: F811  (the fixture imported above)
) -> None:
    fleet_on(settings)
    settings.PERFKIT["PROFILER"]["SLOW_REQUEST_MS"] = 1
    settings.PERFKIT["QUERY_GUARD"] = {"MODE": "log"}
    make_articles(4)
    assert staff_client.get("/articles/naive/").status_code == 200
    html = staff_client.get("/perfkit/slow/").content.decode()
    row = cell(html, "slow", "GET /articles/naive/")
    assert int(row[4]) >= 4  # queries
    assert int(row[7]) >= 1  # N+1 findings
    assert "news.Article.author" in html
    assert "select_related(&quot;author&quot;)" in html  # the fix, escaped
    assert "Slowest queries" in html


def test_profiles_page_lists_and_links_a_profile(settings: Any, client: Client) -> None:
    fleet_on(settings)
    staff = User.objects.create_user("prof", password="pw", is_staff=True)
    client.force_login(staff)
    response = client.get("/articles/", HTTP_X_PERFKIT_PROFILE="1")
    profile_id = response["X-Perfkit-Profile-Id"]
    html = client.get("/perfkit/profiles/").content.decode()
    assert f'href="/perfkit/profiles/{profile_id}/"' in html
    assert "GET /articles/" in html and f"user:{staff.pk}" in html
    assert client.get(f"/perfkit/profiles/{profile_id}/").status_code == 200


def test_pages_render_empty_without_redis(settings: Any, staff_client: Client) -> None:
    settings.PERFKIT = {
        **settings.PERFKIT,
        "REDIS_CACHE_ALIAS": "locmem",
        "FLEET": {"ENABLED": True},
    }
    for url in PAGES[:5]:
        response = staff_client.get(url)
        assert response.status_code == 200
        assert b"perfkit has no Redis configured" in response.content


# --- escaping ---------------------------------------------------------------------------


def test_an_xss_probe_in_a_path_renders_inert_on_every_page(settings: Any, client: Client) -> None:
    fleet_on(settings)
    settings.PERFKIT["PROFILER"]["SLOW_REQUEST_MS"] = 1
    staff = User.objects.create_user("xss", password="pw", is_staff=True)
    client.force_login(staff)
    probe_path = "/nothing/" + PROBE
    # The path reaches the slow-request list, the profile list and the stats
    # (a token profiles the whole request, the 404 included).
    client.get(probe_path, HTTP_X_PERFKIT_PROFILE=make_token(staff, 60))
    record = RequestRecord(method="GET", path=probe_path)
    record.route = PROBE
    record.finished = record.started + 2
    record.status = 500
    report_slow_request(record, None, None)  # type: ignore[arg-type]
    recorder.add(record)
    assert recorder.flush()
    for url in PAGES:
        html = client.get(url).content.decode()
        assert PROBE not in html, url
    assert (
        "&lt;script&gt;window.__xss=1&lt;/script&gt;"
        in client.get("/perfkit/slow/").content.decode()
    )
    assert "&lt;script&gt;" in client.get("/perfkit/routes/").content.decode()
    assert "&lt;script&gt;" in client.get("/perfkit/profiles/").content.decode()
    # Query-string values echoed into forms are escaped too.
    html = client.get("/perfkit/routes/", {"sort": PROBE, "x": PROBE}).content.decode()
    assert PROBE not in html


def test_svg_charts_escape_their_labels() -> None:
    chart = bar_chart([1, 2], ["<b>", "x"], unit="<i>")
    assert "<b>" not in chart and "&lt;b&gt;" in chart
    assert sparkline([]) == ""
    assert sparkline([0, 0]).count("polyline") == 1


# --- database page ----------------------------------------------------------------------


@pytest.mark.skipif(connection.vendor == "postgresql", reason="the non-PostgreSQL message")
def test_database_page_says_what_it_needs_elsewhere(staff_client: Client) -> None:
    html = staff_client.get("/perfkit/database/").content.decode()
    assert "not PostgreSQL" in html


def test_blocking_chains_follow_waiters_to_the_head() -> None:
    rows = [
        {"pid": 1, "blocked_by": []},
        {"pid": 2, "blocked_by": [1]},
        {"pid": 3, "blocked_by": [2]},
        {"pid": 4, "blocked_by": [5]},
        {"pid": 5, "blocked_by": [4]},  # a deadlock PostgreSQL is about to break
    ]
    assert blocking_chains(rows) == [[3, 2, 1], [2, 1], [4, 5], [5, 4]]


def wait_for(client: Client, url: str, text: str) -> str:
    deadline = time.monotonic() + 10
    html = ""
    while time.monotonic() < deadline:
        html = client.get(url).content.decode()
        if text in html:
            return html
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared on {url}")


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL only")
def test_database_page_shows_who_blocks_whom_hiding_values(settings: Any, client: Client) -> None:
    fleet_on(settings)
    superuser = User.objects.create_user("root", password="pw", is_staff=True, is_superuser=True)
    client.force_login(superuser)
    with lock_and_wait() as (holder, waiter, _):
        html = wait_for(client, "/perfkit/database/", f"{waiter} ")
        chain = cell(html, "chains", f"<td>{waiter}</td>")
        assert (
            re.sub(r"\s+", " ", chain[1]) == f"{waiter} (active) → {holder} (idle in transaction)"
        )
        assert "secret-value" not in html and "name = ?" in html
        assert str(holder) in cell(html, "idle", f'<td class="num">{holder}</td>')[0]
        settings.PERFKIT = {**settings.PERFKIT, "PANEL": {"SHOW_SQL_PARAMS": True}}
        assert "secret-value" in client.get("/perfkit/database/").content.decode()


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL only")
def test_cancel_needs_a_superuser_csrf_and_a_confirmation(settings: Any) -> None:
    fleet_on(settings)
    staff = User.objects.create_user("staff", password="pw", is_staff=True)
    root = User.objects.create_user("root", password="pw", is_staff=True, is_superuser=True)
    with lock_and_wait() as (_, waiter, blocked):
        plain = Client(enforce_csrf_checks=True)
        plain.force_login(staff)
        html = wait_for(plain, "/perfkit/database/", f"{waiter} ")
        assert "Terminate" not in html  # no buttons for staff
        # Staff with a valid CSRF token: still not allowed (a 404, as for a stranger).
        secret = get_random_string(32)  # a CSRF cookie and the same token in the form
        plain.cookies["csrftoken"] = secret
        staff_form = {
            "csrfmiddlewaretoken": secret,
            "pid": waiter,
            "action": "cancel",
            "confirmed": "1",
        }
        assert plain.post("/perfkit/database/signal/", staff_form).status_code == 404
        assert blocked.is_alive()
        client = Client(enforce_csrf_checks=True)
        client.force_login(root)
        html = client.get("/perfkit/database/").content.decode()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
        assert token, "no CSRF token in the Database page's forms"
        started = re.search(
            rf'name="pid" value="{waiter}"><input type="hidden" name="backend_start" '
            r'value="([^"]+)"',
            html,
        )
        assert started, "the form names the session's start"
        form = {
            "csrfmiddlewaretoken": token.group(1),
            "pid": waiter,
            "action": "cancel",
            "backend_start": started.group(1),
        }
        # The same pid with another session's start (a reused pid): nothing done.
        reused = client.post(
            "/perfkit/database/signal/", {**form, "backend_start": "1.0", "confirmed": "1"}
        )
        assert reused["Location"].endswith("done=0")
        assert blocked.is_alive()
        # Without the token: refused.
        assert (
            client.post(
                "/perfkit/database/signal/", {"pid": waiter, "action": "cancel"}
            ).status_code
            == 403
        )
        # First POST: a confirmation page; nothing done yet.
        confirm = client.post("/perfkit/database/signal/", form)
        assert confirm.status_code == 200 and b"Yes, cancel" in confirm.content
        assert blocked.is_alive()
        done = client.post("/perfkit/database/signal/", {**form, "confirmed": "1"})
        assert done.status_code == 302
        assert done["Location"].endswith(f"signalled={waiter}&action=cancel&done=1")
        blocked.join(timeout=10)
        assert not blocked.is_alive()
        # A pid that is not a client session of this database: nothing done.
        other = client.post("/perfkit/database/signal/", {**form, "pid": 1, "confirmed": "1"})
        assert other["Location"].endswith("done=0")


def test_the_panels_own_requests_are_not_counted(settings: Any, staff_client: Client) -> None:
    fleet_on(settings)
    for url in [*PAGES, "/perfkit/assets/panel.css"]:
        assert staff_client.get(url).status_code == 200
    staff_client.get("/healthz")
    assert recorder.flush()
    routes = {row["route"] for row in fleet_snapshot(1)["routes"]}
    assert routes == {"healthz"}
    assert recorder._inflight == {}


@pytest.mark.parametrize(
    ("sql", "shown"),
    [
        # pg_stat_activity cut the text inside a string: the rest is dropped.
        ("SELECT 1 FROM t WHERE a = 'alice@exam", "SELECT ? FROM t WHERE a = …"),
        ("SELECT $$secret$$, $tag$hunter2$tag$", "SELECT ?, ?"),
        ("SELECT E'it\\'s secret' FROM t", "SELECT ? FROM t"),
        ("SELECT /* user alice@example.com */ 1", "SELECT ?"),
        ("SELECT 1 -- alice@example.com", "SELECT ? --"),
        ("SELECT 2 /* alice, cut", "SELECT ? …"),
    ],
)
def test_hide_values_leaves_no_value(sql: str, shown: str) -> None:
    hidden = hide_values(sql)
    assert hidden.startswith(shown)
    for secret in ("alice", "secret", "hunter2", "exam"):
        assert secret not in hidden


def test_pages_say_when_redis_does_not_answer(settings: Any, staff_client: Client) -> None:
    settings.PERFKIT = {
        **settings.PERFKIT,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        "FLEET": {"ENABLED": True},
    }
    for url in PAGES[:5]:
        response = staff_client.get(url)
        assert response.status_code == 200
        assert b"Redis did not answer every read of this page" in response.content, url


def test_expired_profiles_are_not_listed(settings: Any, client: Client, monkeypatch: Any) -> None:
    fleet_on(settings)
    staff = User.objects.create_user("late", password="pw", is_staff=True)
    client.force_login(staff)
    client.get("/articles/", HTTP_X_PERFKIT_PROFILE="1")
    assert len(recent_profiles()) == 1
    later = time.time() + get_settings().profiler.ttl + 5
    monkeypatch.setattr("django_perfkit.profiler.session.time.time", lambda: later)
    assert recent_profiles() == []
