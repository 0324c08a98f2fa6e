"""Fleet stats: per-route counts from several processes, added up; perfkit_top; pgactivity."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db import connection

from django_perfkit.fleet import fleet_snapshot
from django_perfkit.fleet.stats import Recorder, _server_id, live_servers, recorder
from django_perfkit.record import RatelimitDecision, RequestRecord
from tests.pg_sessions import lock_and_wait
from tests.settings import RUN_ID

ROOT = Path(__file__).resolve().parent.parent


def request(
    route: str | None, status: int = 200, ms: float = 20, queries: int = 0
) -> RequestRecord:
    record = RequestRecord(method="GET", path=f"/{route}")
    record.finished = record.started + ms / 1000
    record.status = status
    record.route = route
    record.db.count = queries
    return record


def test_counts_latency_and_queries_per_route() -> None:
    counts = Recorder(background=False)
    for ms in (3, 7, 7, 30, 30, 30, 30, 30, 30, 400):  # 10 requests
        counts.add(request("articles/", ms=ms, queries=4))
    counts.add(request("articles/", status=503, ms=2))
    counts.add(request(None, status=404))
    assert counts.flush()
    snapshot = fleet_snapshot(minutes=2)
    assert list(snapshot["servers"]) == [_server_id()]
    rows = {row["route"]: row for row in snapshot["routes"]}
    articles = rows["articles/"]
    assert articles["requests"] == 11
    assert articles["errors"] == 1
    assert articles["p50_ms"] == 50  # the 6th of 11 is 30 ms: bucket 25-50
    assert articles["p99_ms"] == 500  # 400 ms: bucket 250-500
    assert articles["mean_queries"] == round(40 / 11, 2)
    assert rows["(unresolved)"]["requests"] == 1


@pytest.mark.django_db
def test_three_processes_add_up_exactly(client: Any) -> None:
    env = {**os.environ, "PERFKIT_TEST_RUN_ID": RUN_ID, "PYTHONPATH": str(ROOT)}
    workers = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "fleet_worker.py"), str(n)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for n in (5, 7, 11)
    ]
    servers = set()
    for worker in workers:
        out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0
        servers.add(out.strip())
    snapshot = fleet_snapshot(minutes=2)
    assert servers <= set(snapshot["servers"])
    rows = {row["route"]: row for row in snapshot["routes"]}
    assert rows["articles/"]["requests"] == 23
    assert rows["api/articles/"]["errors"] == 23
    assert sorted(rows["articles/"]["servers"]) == sorted(servers)
    out = StringIO()
    call_command("perfkit_top", "--once", "--minutes", "2", stdout=out)
    text = out.getvalue()
    assert "3 server(s), 46 requests in 2 min" in text
    assert "articles/" in text and "api/articles/" in text
    out = StringIO()
    call_command(
        "perfkit_top", "--json", "--minutes", "2", "--server", sorted(servers)[0], stdout=out
    )
    one = json.loads(out.getvalue())
    assert len(one["servers"]) == 1
    assert sum(row["requests"] for row in one["routes"]) in (10, 14, 22)
    # The panel shows the same: every server, and the exact sums.
    client.force_login(User.objects.create_user("ops", is_staff=True))
    overview = client.get("/perfkit/?minutes=5").content.decode()
    for server in servers:
        assert f"<code>{server}</code>" in overview
    routes = client.get("/perfkit/routes/?minutes=5").content.decode()
    assert re.search(r"<code>articles/</code>.*?<td class=\"num\">23</td>", routes, re.S)
    assert re.search(
        r"<code>api/articles/</code>.*?<td class=\"num\">23</td>\s*"
        r"<td class=\"num\">0</td>\s*<td class=\"num bad\">23</td>",
        routes,
        re.S,
    )


def test_a_server_that_stopped_flushing_disappears() -> None:
    counts = Recorder(background=False)
    counts.add(request("articles/"))
    assert counts.flush()
    assert _server_id() in live_servers()
    assert _server_id() not in live_servers(now=time.time() + 60)


def test_routes_beyond_the_limit_count_as_other(settings: Any) -> None:
    settings.PERFKIT = {**settings.PERFKIT, "FLEET": {"ENABLED": False, "MAX_ROUTES": 2}}
    counts = Recorder(background=False)
    for route in ("a/", "b/", "c/", "d/"):
        counts.add(request(route))
    assert counts.flush()
    rows = {row["route"]: row["requests"] for row in fleet_snapshot(minutes=2)["routes"]}
    assert rows == {"a/": 1, "b/": 1, "(other)": 2}


def test_without_redis_counts_are_dropped_not_kept(settings: Any) -> None:
    settings.PERFKIT = {**settings.PERFKIT, "REDIS_CACHE_ALIAS": None}
    counts = Recorder(background=False)
    counts.add(request("articles/"))
    assert counts.flush() is False
    assert counts._counts == {}  # bounded: nothing piles up while Redis is away


@pytest.mark.django_db
def test_requests_through_the_middleware_are_counted(
    client: Any, settings: Any, monkeypatch: Any
) -> None:
    settings.PERFKIT = {**settings.PERFKIT, "FLEET": {"ENABLED": True}}
    # No flush thread left behind to write into a later test's Redis.
    monkeypatch.setattr(recorder, "background", False)
    recorder.flush()  # start from nothing
    for _ in range(3):
        client.get("/healthz")
    assert recorder.flush()
    rows = {row["route"]: row for row in fleet_snapshot(minutes=2)["routes"]}
    assert rows["healthz"]["requests"] == 3


def test_perfkit_top_rejects_a_bad_window() -> None:
    with pytest.raises(CommandError, match="--minutes must be at least 1"):
        call_command("perfkit_top", "--once", "--minutes", "0")


# --- pg activity --------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL only")
def test_pgactivity_shows_long_queries_and_who_blocks_whom() -> None:
    from django_perfkit.management.commands.perfkit_pgactivity import activity

    with lock_and_wait("secret") as (holder, waiter, blocked):
        deadline = time.monotonic() + 10
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = activity(min_duration=0.2)
            if any(row["pid"] == waiter for row in rows):
                break
            time.sleep(0.1)
        (row,) = [row for row in rows if row["pid"] == waiter]
        assert row["blocked_by"] == [holder]
        assert row["wait_event_type"] == "Lock"
        assert "secret" not in row["query"] and "name = ?" in row["query"]
        assert any(r["pid"] == holder and r["state"] == "idle in transaction" for r in rows)
        out = StringIO()
        call_command("perfkit_pgactivity", "--cancel", str(waiter), "--yes", stdout=out)
        assert f"cancel {waiter}: done" in out.getvalue()
        blocked.join(timeout=10)
        assert not blocked.is_alive()


@pytest.mark.django_db
@pytest.mark.skipif(connection.vendor == "postgresql", reason="the non-PostgreSQL message")
def test_pgactivity_says_what_it_needs_on_other_databases() -> None:
    with pytest.raises(CommandError, match="not PostgreSQL"):
        call_command("perfkit_pgactivity")


@pytest.mark.django_db
def test_pgactivity_cancel_needs_confirmation(monkeypatch: Any) -> None:
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    # A pid that is not a client session of this database is refused before asking.
    with pytest.raises(CommandError, match="no client session 12345|not PostgreSQL"):
        call_command("perfkit_pgactivity", "--cancel", "12345")
    with pytest.raises(CommandError, match="not both"):
        call_command("perfkit_pgactivity", "--cancel", "1", "--terminate", "2")


def test_rate_limit_groups_in_flight_and_series() -> None:
    counts = Recorder(background=False)
    blocked = request("search/")
    blocked.ratelimits = [
        RatelimitDecision("news.search", True, 5, 0, "sliding", False),
        RatelimitDecision("news.ip", False, 50, 40, "sliding", False),
    ]
    counts.add(blocked)
    counts.add(request("search/"))
    counts.enter("search/")
    counts.enter("search/")
    counts.leave("search/")
    assert counts.flush()
    snapshot = fleet_snapshot(minutes=3)
    groups = {group["group"]: group for group in snapshot["ratelimits"]}
    assert (groups["news.search"]["checked"], groups["news.search"]["limited"]) == (1, 1)
    assert (groups["news.ip"]["checked"], groups["news.ip"]["limited"]) == (1, 0)
    assert groups["news.search"]["series"][-1] == 1 and len(groups["news.search"]["series"]) == 3
    (row,) = snapshot["routes"]
    assert (row["requests"], row["ratelimited"], row["inflight"]) == (2, 1, 1)
    # Both in the last minute, or across a minute's edge between the two adds.
    assert sum(row["series"]) == 2 and len(row["series"]) == 3 and row["series"][0] == 0
    assert snapshot["totals"]["inflight"] == 1
    assert snapshot["servers"][_server_id()]["inflight"] == 1
    counts.leave("search/")
    assert counts.flush()
    assert fleet_snapshot(minutes=3)["totals"]["inflight"] == 0


def test_the_root_route_is_a_route_not_unresolved() -> None:
    counts = Recorder(background=False)
    counts.add(request(""))  # path("", home): the root pattern
    counts.add(request(None, status=404))
    assert counts.flush()
    rows = {row["route"]: row["requests"] for row in fleet_snapshot(minutes=2)["routes"]}
    assert rows == {"/": 1, "(unresolved)": 1}
