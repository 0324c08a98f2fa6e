"""The web panel in a real browser: Playwright driving Debian's Chromium.

Why a browser, when the views have their own tests: the panel is what an
on-call engineer opens during an incident, and what can break it lives
between the pieces: the login and session cookies, the counts that one
process records and another request reads back from Redis, the links from
one page to the next, the JavaScript that refreshes a page, pyinstrument's
page that only renders in a browser, and whether text a client chose (a URL
path) can run as script in a staff member's session. So these tests sign in
through the admin's login form, make traffic against ``live_server`` (a real
HTTP server in this process, so ``recorder`` is the one counting it) and
read the panel the way a person does.

Chromium is Debian's package (``/usr/bin/chromium``; ``make test`` installs
it with ``scripts/ensure-browser.sh``); Playwright is the ``test`` extra.
Without either the module is skipped, unless ``PERFKIT_REQUIRE_BROWSER=1``
(set by ``make test``), which turns a missing browser into a failure.
``PERFKIT_SCREENSHOTS=<dir>`` saves a full-page PNG of each panel page.

Playwright's sync API keeps an event loop running in the test's thread, and
Django refuses ORM calls from a thread with a running loop: the module sets
``DJANGO_ALLOW_ASYNC_UNSAFE`` for as long as the browser is up (the ORM
calls here are ordinary blocking ones; nothing else runs on that loop).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.contrib.auth.models import User
from django.test import RequestFactory
from django.utils import timezone
from model_bakery import baker

from django_perfkit.fleet import stats
from django_perfkit.profiler.slow import report_slow_request
from django_perfkit.record import RequestRecord, Section
from testproject.news.models import Article

CHROMIUM = "/usr/bin/chromium"
REQUIRE_BROWSER = os.environ.get("PERFKIT_REQUIRE_BROWSER") == "1"

try:
    from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect, sync_playwright
except ImportError as error:  # the test extra is not installed (a bare tox env, say)
    if REQUIRE_BROWSER:
        pytest.fail(
            f"PERFKIT_REQUIRE_BROWSER=1 but Playwright cannot be imported ({error}): "
            "run `make test`, which installs the test extra and the browser.",
            pytrace=False,
        )
    pytest.skip(f"Playwright is not installed ({error})", allow_module_level=True)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    # The live server shares the test's one in-memory SQLite connection across its
    # threads, and a browser sends requests in parallel (the page, its CSS, its
    # script): sqlite3 then fails ("bad parameter or other API misuse"). The panel
    # is the same on either database; make test runs these on PostgreSQL.
    pytest.mark.skipif(
        __import__("django.db").db.connection.vendor == "sqlite",
        reason="the live server cannot share an in-memory SQLite database across threads",
    ),
]

PASSWORD = "correct-horse-battery-staple"

#: The six panel pages: (nav link, URL, heading, screenshot name).
PAGES = [
    ("Overview", "/perfkit/", "Overview", "overview"),
    ("Routes", "/perfkit/routes/", "Routes", "routes"),
    ("Slow requests", "/perfkit/slow/", "Slow requests", "slow"),
    ("Profiles", "/perfkit/profiles/", "Profiles", "profiles"),
    ("Rate limits", "/perfkit/ratelimits/", "Rate limits", "ratelimits"),
    ("Database", "/perfkit/database/", "Database default", "database"),
]

#: Text a client controls (the URL path), which the panel must show as text.
PROBE_PATH = "/perfkit-probe/<script>window.__xss=1</script>"
#: Markup that runs without a <script> element: an event handler, which runs
#: even when inserted by script (the auto-refresh), where a <script> would not.
PROBE_ROUTE = "<img src=x onerror=window.__xss=2>"


# --- the browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def _orm_beside_playwright() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        yield


@pytest.fixture(scope="module")
def browser(_orm_beside_playwright: None) -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        if REQUIRE_BROWSER:
            pytest.fail(
                f"{CHROMIUM} is missing: run `make test`, which installs Debian's chromium "
                "(scripts/ensure-browser.sh).",
                pytrace=False,
            )
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium, or `make test`)")
    playwright = sync_playwright().start()
    try:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        yield launched
        launched.close()
    finally:
        playwright.stop()


@pytest.fixture
def new_context(browser: Browser, live_server: Any) -> Iterator[Callable[[], BrowserContext]]:
    """Fresh browser contexts (no cookies) on the live server; closed after the test."""
    made: list[BrowserContext] = []

    def new() -> BrowserContext:
        context = browser.new_context(base_url=live_server.url)
        context.set_default_timeout(10_000)
        made.append(context)
        return context

    yield new
    for context in made:
        context.close()


# --- the site ---------------------------------------------------------------------------


@pytest.fixture
def recorder(settings: Any, monkeypatch: pytest.MonkeyPatch) -> stats.Recorder:
    """The panel's settings for these tests (fleet stats on, a profile whenever asked,
    no auto-refresh), and a recorder of this test's own: what earlier tests left in
    the process's recorder must not add to the counts asserted here."""
    settings.PERFKIT = {
        **settings.PERFKIT,
        "FLEET": {"ENABLED": True},
        # One profile per caller per millisecond, not per 10 s.
        "PROFILER": {"MIN_INTERVAL": 0},
        # No refresh under the tests' feet (test_the_routes_page_refreshes_itself turns it on).
        "PANEL": {"REFRESH_SECONDS": 0},
    }
    fresh = stats.Recorder(background=False)
    monkeypatch.setattr(stats, "recorder", fresh)
    return fresh


@pytest.fixture
def staff() -> User:
    return User.objects.create_user("oncall", password=PASSWORD, is_staff=True)


@pytest.fixture
def articles() -> list[Article]:
    now = timezone.now()
    return [
        baker.make(Article, is_published=True, published_at=now - timedelta(hours=i))
        for i in range(3)
    ]


def log_in(context: BrowserContext, user: User) -> Page:
    """Sign in through the admin's login form, which sends a staff user on to the panel."""
    page = context.new_page()
    page.goto("/admin/login/?next=/perfkit/")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/perfkit/$"))
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    return page


def visit(page: Page, url: str, status: int = 200) -> None:
    response = page.goto(url)
    assert response is not None and response.status == status, (url, response)


def route_cell(page: Page, route: str, column: int = 1) -> Locator:
    """A cell of the Routes table's row for ``route`` (column 1: Requests)."""
    name = page.locator("td:first-child > code", has_text=re.compile(f"^{re.escape(route)}$"))
    return page.locator("table#routes tbody tr").filter(has=name).locator("td").nth(column)


def panel_link(page: Page, name: str) -> Locator:
    nav = page.get_by_role("navigation", name="perfkit panel")
    return nav.get_by_role("link", name=name, exact=True)


# --- the tests --------------------------------------------------------------------------


def test_staff_sees_the_traffic_they_made_and_its_profile(
    new_context: Callable[[], BrowserContext],
    recorder: stats.Recorder,
    staff: User,
    articles: list[Article],
) -> None:
    page = log_in(new_context(), staff)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    for _ in range(3):
        visit(page, "/articles/")
    visit(page, "/")
    visit(page, "/api/articles/")
    assert recorder.flush()

    # Overview: this process is an app server that reported.
    visit(page, "/perfkit/")
    servers = page.locator("table#servers tbody")
    expect(servers.locator("code", has_text=stats._server_id())).to_have_count(1)
    expect(page.locator("#servers-count")).to_have_text("1")

    # Routes, reached from the nav: the counts of exactly what the browser asked for.
    panel_link(page, "Routes").click()
    expect(page.get_by_role("heading", name="Routes")).to_be_visible()
    expect(route_cell(page, "articles/")).to_have_text("3")
    expect(route_cell(page, "api/articles/")).to_have_text("1")
    expect(route_cell(page, "articles/", column=3)).to_have_text("0")  # no errors

    # A profile of one request, asked for by the signed-in staff user (the
    # request shares the page's cookies), found on the Profiles page.
    profiled = page.request.get("/articles/", headers={"X-Perfkit-Profile": "1"})
    assert profiled.ok
    profile_id = profiled.headers["x-perfkit-profile-id"]
    assert profiled.headers["x-perfkit-profile-url"] == f"/perfkit/profiles/{profile_id}/"
    panel_link(page, "Profiles").click()
    row = page.locator("table#profiles tbody tr", has_text="GET /articles/")
    expect(row).to_have_count(1)
    expect(row).to_contain_text(f"user:{staff.pk}")
    row.get_by_role("link", name="HTML", exact=True).click()
    expect(page).to_have_url(re.compile(f"/perfkit/profiles/{re.escape(profile_id)}/$"))
    # pyinstrument's page draws the call tree with its own script: the view is in it.
    expect(page.locator("#app")).to_contain_text("article_list")

    # Every page renders, links to the others, and runs its script without an error.
    visit(page, "/perfkit/")
    shots = os.environ.get("PERFKIT_SCREENSHOTS")
    for link, url, heading, name in PAGES:
        panel_link(page, link).click()
        expect(page).to_have_url(re.compile(f"{re.escape(url)}$"))
        expect(page.get_by_role("heading", level=1)).to_have_text(heading)
        expect(panel_link(page, link)).to_have_attribute("aria-current", "page")
        if shots:
            Path(shots).mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(Path(shots) / f"{name}.png"), full_page=True)
    assert errors == []


def test_the_panel_is_a_404_to_anyone_but_staff(
    new_context: Callable[[], BrowserContext],
    recorder: stats.Recorder,
    staff: User,
    live_server: Any,
) -> None:
    staff_page = log_in(new_context(), staff)
    profiled = staff_page.request.get("/healthz", headers={"X-Perfkit-Profile": "1"})
    profile_url = profiled.headers["x-perfkit-profile-url"]
    visit(staff_page, profile_url)  # it exists, for staff

    anonymous = new_context().new_page()
    visit(anonymous, "/perfkit-no-such-page/", status=404)
    not_found = anonymous.content()
    for url in ("/perfkit/", "/perfkit/routes/", profile_url):
        visit(anonymous, url, status=404)
        assert anonymous.content() == not_found  # the site's own 404: nothing revealed

    # A signed-in user who is not staff (through the demo site's login form).
    User.objects.create_user("reader", password=PASSWORD)
    reader = new_context().new_page()
    reader.goto("/login/")
    reader.get_by_label("Username").fill("reader")
    reader.get_by_label("Password").fill(PASSWORD)
    reader.get_by_role("button", name="Log in").click()
    expect(reader).to_have_url(f"{live_server.url}/")  # signed in: sent to the home page
    assert any(cookie["name"] == "sessionid" for cookie in reader.context.cookies())
    for url in ("/perfkit/", "/perfkit/routes/", profile_url):
        visit(reader, url, status=404)


def test_text_from_a_request_is_shown_as_text_on_the_slow_page(
    new_context: Callable[[], BrowserContext], recorder: stats.Recorder, staff: User
) -> None:
    # The probe, sent by an anonymous client: a 404, counted like any request.
    anonymous = new_context().new_page()
    visit(anonymous, quote(PROBE_PATH), status=404)

    # The slow-request reporter keeping that request, as it does one that took
    # longer than SLOW_REQUEST_MS (1,000 ms by default): this one took 2 s, so
    # the test does not depend on how fast a 404 is served.
    now = time.perf_counter()
    record = RequestRecord(
        method="GET", path=PROBE_PATH, status=404, route=PROBE_ROUTE, started=now - 2, finished=now
    )
    record.sections[PROBE_ROUTE] = Section(count=1, time=0.5)
    request = RequestFactory().get(quote(PROBE_PATH))
    # In a thread of its own: from this one (Playwright's running loop) the
    # reporter would write to Redis from a background thread, maybe too late.
    writer = threading.Thread(target=report_slow_request, args=(record, request, None))
    writer.start()
    writer.join()

    page = log_in(new_context(), staff)
    panel_link(page, "Slow requests").click()
    summary = page.locator("table#slow details summary", has_text="/perfkit-probe/")
    expect(summary).to_have_count(1)
    expect(summary).to_have_text(f"GET {PROBE_PATH}")
    summary.click()
    details = page.locator("table#slow details[open]")
    expect(details.get_by_text(f"Route: {PROBE_ROUTE}")).to_be_visible()
    expect(details.locator("code", has_text=PROBE_ROUTE)).to_have_count(2)  # route, section
    page.wait_for_load_state()  # an <img> that failed to load has run its onerror by now
    assert page.locator("main script, main img").count() == 0
    assert page.evaluate("window.__xss") is None

    # The route link filters the page by the probe, which the page then repeats.
    details.get_by_role("link", name=PROBE_ROUTE).click()
    expect(page.locator("main > p.muted").first).to_contain_text(f"Route {PROBE_ROUTE} only")
    expect(page.locator("table#slow tbody tr").filter(has=page.locator("details"))).to_have_count(1)
    page.wait_for_load_state()  # an <img> that failed to load has run its onerror by now
    assert page.locator("main script, main img").count() == 0
    assert page.evaluate("window.__xss") is None


def test_the_routes_page_refreshes_itself(
    new_context: Callable[[], BrowserContext],
    recorder: stats.Recorder,
    settings: Any,
    staff: User,
    articles: list[Article],
) -> None:
    settings.PERFKIT = {**settings.PERFKIT, "PANEL": {"REFRESH_SECONDS": 1}}
    page = log_in(new_context(), staff)
    visit(page, "/articles/")
    assert recorder.flush()
    visit(page, "/perfkit/routes/")
    expect(page.locator("main")).to_have_attribute("data-refresh", "1")
    expect(page.locator("#perfkit-autorefresh")).to_be_checked()
    expect(route_cell(page, "articles/")).to_have_text("1")

    page.evaluate("window.__samePage = true")
    for _ in range(2):
        assert page.request.get("/articles/").ok
    assert recorder.flush()
    # No navigation: the page's script fetched itself and swapped in the new counts.
    expect(route_cell(page, "articles/")).to_have_text("3", timeout=5_000)
    assert page.evaluate("window.__samePage") is True
