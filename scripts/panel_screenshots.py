"""Screenshots of the panel's pages for the docs (docs/_static/panel/*.png).

A real scene, nothing drawn by hand: the demo news site served by three
app-server processes (``runserver``, one per port, as behind a load
balancer) on a private PostgreSQL and Redis of this run; traffic spread over
them, including the naive N+1 pages (slow requests), a burst on the
rate-limited API, 404s and one profiled request; a session holding a lock
with another one waiting for it. Then Chromium (Playwright) signs in as
staff through the admin and photographs each page.

    .venv/bin/python scripts/panel_screenshots.py [output directory]

(``make screenshots``.) Takes about a minute; touches no shared service.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.pgserver import PrivatePostgres  # noqa: E402
from tests.redis_servers import PrivateRedis, free_port  # noqa: E402

SERVERS = 3
PAGES = ["overview", "routes", "slow", "profiles", "ratelimits", "database"]
URLS = {
    "overview": "/perfkit/?minutes=5",
    "routes": "/perfkit/routes/?minutes=5&sort=p95",
    "slow": "/perfkit/slow/",
    "profiles": "/perfkit/profiles/",
    "ratelimits": "/perfkit/ratelimits/?minutes=5",
    "database": "/perfkit/database/",
}


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        response.read()
        return response.status, dict(response.getheaders())
    finally:
        connection.close()


def wait_for(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            get(port, "/healthz")
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the server on port {port} did not start")


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "testproject" / "manage.py"), *args],
        env=env, cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"manage.py {args[0]} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def traffic(ports: list[int], token: str) -> None:
    ring = itertools.cycle(ports)
    plan = (
        ["/"] * 30 + ["/articles/"] * 40 + ["/api/articles/"] * 12 + ["/articles/naive/"] * 6
        + ["/api/articles/naive/"] * 4 + ["/search/?q=the"] * 8 + ["/healthz"] * 20
        + ["/wp-login.php", "/.env"] * 3
    )  # fmt: skip
    for path in plan:
        get(next(ring), path)
    for _ in range(30):  # a burst on the API from one client: limited after 20 a minute
        get(ports[0], "/api/articles/")
    status, headers = get(ports[1], "/articles/naive/", {"X-Perfkit-Profile": token})
    print(f"profiled /articles/naive/: {status} {headers.get('X-Perfkit-Profile-Id')}")
    get(ports[2], "/articles/", {"X-Perfkit-Profile": token})


def hold_a_lock(pg: PrivatePostgres, database: str, stop: threading.Event) -> None:
    """One session holds a lock, idle in its transaction; another waits for it."""
    import psycopg

    dsn = f"host=127.0.0.1 port={pg.port} user={pg.user} dbname={database}"
    holder = psycopg.connect(dsn, application_name="nightly-report")
    holder.execute("LOCK TABLE news_comment IN ACCESS EXCLUSIVE MODE")
    waiter = psycopg.connect(dsn, autocommit=True, application_name="gunicorn")

    def wait() -> None:
        with contextlib.suppress(psycopg.Error):  # ended by the rollback below
            waiter.execute("SELECT count(*) FROM news_comment WHERE author_name = 'alice'")

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    stop.wait()
    holder.rollback()
    thread.join(timeout=5)
    holder.close()
    waiter.close()


def photograph(port: int, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        base = f"http://127.0.0.1:{port}"
        page.goto(f"{base}/admin/login/?next=/perfkit/")
        page.fill("#id_username", "oncall")
        page.fill("#id_password", "screenshots-only")
        page.click("input[type=submit]")
        page.wait_for_url(f"{base}/perfkit/")
        out.mkdir(parents=True, exist_ok=True)
        for name in PAGES:
            page.goto(base + URLS[name])
            if name == "slow":  # open one N+1 page's record
                page.locator("details", has_text="GET /articles/naive/").first.evaluate(
                    "d => d.open = true"
                )
            page.screenshot(path=str(out / f"{name}.png"), full_page=True)
            print(f"wrote {out / f'{name}.png'}")
        browser.close()


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "_static" / "panel"
    pg, redis = PrivatePostgres(), PrivateRedis()
    database = "perfkit_screens"
    servers: list[subprocess.Popen[bytes]] = []
    stop = threading.Event()
    logs = Path(tempfile.mkdtemp(prefix="perfkit-screens-"))
    try:
        pg.start()
        redis.start()
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "scripts.panel_screenshots_settings",
            "DATABASE_URL": f"postgres://{pg.user}@127.0.0.1:{pg.port}/{database}",
            "REDIS_URL": redis.url,
            "PERFKIT_DEMO_QUIET": "1",
            "PYTHONPATH": str(ROOT),
        }
        for args in (["prepare_db"], ["migrate", "--noinput"], ["seed", "--if-empty"]):
            manage(env, *args)
        script = (
            "from django.contrib.auth.models import User;"
            "User.objects.create_superuser('oncall', 'oncall@example.com', 'screenshots-only');"
            "from django_perfkit.profiler import make_token;"
            "print(make_token(User.objects.get(username='oncall'), 600))"
        )
        token = manage(env, "shell", "-c", script).strip().splitlines()[-1]
        ports = [free_port() for _ in range(SERVERS)]
        for port in ports:
            log = (logs / f"{port}.log").open("wb")
            servers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(ROOT / "testproject" / "manage.py"),
                        "runserver",
                        f"127.0.0.1:{port}",
                        "--noreload",
                    ],
                    env=env,
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )  # fmt: skip
            )
        for port in ports:
            wait_for(port)
        traffic(ports, token)
        locker = threading.Thread(target=hold_a_lock, args=(pg, database, stop), daemon=True)
        locker.start()
        time.sleep(3)  # the lock waits a little; every server flushes its counts
        photograph(ports[0], out)
    finally:
        stop.set()
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=10)
        redis.stop()
        pg.stop()


if __name__ == "__main__":
    main()
