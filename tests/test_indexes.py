"""The index advisor, against a real table of 50,000 rows: PostgreSQL, or SQLite
(``PERFKIT_TEST_DB=sqlite``). Tests that hold on both run on both."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import pytest
from django.core.checks import Tags, run_checks
from django.db import connection, connections, transaction
from django.db.models import Exists, OuterRef

from django_perfkit.queries import capture
from django_perfkit.queries import indexes as advisor
from django_perfkit.queries.checks import check_index_advisor, unsupported_databases
from tests.guardapp.models import Event, Publisher

pytestmark = pytest.mark.django_db(transaction=True)

POSTGRESQL = connection.vendor == "postgresql"
pg_only = pytest.mark.skipif(not POSTGRESQL, reason="PostgreSQL's plans and statistics")
sqlite_only = pytest.mark.skipif(
    connection.vendor != "sqlite", reason="SQLite's EXPLAIN QUERY PLAN (PERFKIT_TEST_DB=sqlite)"
)
#: How each database's plan names a full read of a table.
SCAN = "Seq Scan on" if POSTGRESQL else "SCAN"


@pytest.fixture
def events() -> Iterator[None]:
    with connection.cursor() as cursor:
        if POSTGRESQL:
            cursor.execute(
                "INSERT INTO guardapp_event (name, kind, happened, is_public) "
                "SELECT 'name-' || g, g % 50, now() - (g || ' minutes')::interval, g % 3 = 0 "
                "FROM generate_series(1, 50000) g"
            )
            cursor.execute("ANALYZE guardapp_event")
        else:
            # No ANALYZE: the advisor's SQLite size is then max(rowid) (see the
            # sqlite_stat1 test); datetimes as Django stores them, text in UTC.
            cursor.execute(
                "INSERT INTO guardapp_event (name, kind, happened, is_public) "
                "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 50000) "
                "SELECT 'name-' || x, x % 50, datetime('now', '-' || x || ' minutes'), x % 3 = 0 "
                "FROM g"
            )
    advisor.forget()
    yield
    advisor.forget()


def test_a_filter_on_an_unindexed_column_of_a_large_table_gets_advice(events: None) -> None:
    with capture(explain=True) as report:
        list(Event.objects.filter(name="name-77"))
    (advice,) = report.index_advice
    assert advice.model == "guardapp.Event"
    assert advice.fields == ["name"]
    assert advice.table_rows >= 40_000  # PostgreSQL's estimate, SQLite's max(rowid)
    assert advice.location is not None and advice.location.startswith("tests/test_indexes.py:")
    assert f"{SCAN} guardapp_event" in advice.plan
    assert advice.suggestion.startswith('add models.Index(fields=["name"], name="')
    assert "to Event.Meta.indexes" in advice.suggestion
    assert "missing index: guardapp.Event" in str(report)


def test_equality_then_range_then_ordering_and_a_partial_condition(events: None) -> None:
    since = datetime(2020, 1, 1, tzinfo=timezone.utc)
    with capture(explain=True) as report:
        recent = Event.objects.filter(kind=7, happened__gte=since, is_public=True)
        list(recent.order_by("-happened")[:10])
    (advice,) = report.index_advice
    assert advice.fields == ["kind", "happened"]
    assert "condition=Q(is_public=True)" in advice.suggestion


def test_after_adding_the_index_no_advice(events: None) -> None:
    with connection.cursor() as cursor:
        cursor.execute("CREATE INDEX guardapp_event_name_test ON guardapp_event (name)")
        if POSTGRESQL:
            cursor.execute("ANALYZE guardapp_event")
    try:
        with capture(explain=True) as report:
            list(Event.objects.filter(name="name-77"))
        assert report.index_advice == []
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP INDEX guardapp_event_name_test")


def test_dropping_the_index_brings_the_advice_back(events: None) -> None:
    # The same query text explained again after each schema change: no plan is
    # kept from before it (SQLite's statement cache would keep one).
    def fields() -> list[list[str]]:
        advisor.forget()
        with capture(explain=True) as report:
            list(Event.objects.filter(name="name-5"))
        return [advice.fields for advice in report.index_advice]

    with connection.cursor() as cursor:
        cursor.execute("CREATE INDEX guardapp_event_name_again ON guardapp_event (name)")
    assert fields() == []
    with connection.cursor() as cursor:
        cursor.execute("DROP INDEX guardapp_event_name_again")
    assert fields() == [["name"]]


def test_no_advice_for_small_tables_key_lookups_or_whole_table_reads(events: None) -> None:
    Publisher.objects.create(name="p")
    with capture(explain=True) as report:
        list(Publisher.objects.filter(name="p"))  # a few rows: a scan is right
        Event.objects.filter(pk=5).first()  # the primary key's index
        Event.objects.count()  # no filter: reads the table anyway
    assert report.index_advice == []


def test_each_query_shape_is_explained_once(events: None) -> None:
    before = dict(advisor.stats)
    with capture(explain=True) as report:
        for name in ("name-1", "name-2", "name-3"):
            list(Event.objects.filter(name=name))
    assert advisor.stats["explained"] == before["explained"] + 1
    assert advisor.stats["cached"] == before["cached"] + 2
    assert len(report.index_advice) == 1


def test_only_slow_queries_are_explained_without_explain(events: None, settings: Any) -> None:
    settings.PERFKIT = {**settings.PERFKIT, "INDEXES": {"EXPLAIN_MS": 10_000}}
    with capture() as report:
        list(Event.objects.filter(name="name-1"))
    assert report.index_advice == []
    settings.PERFKIT = {**settings.PERFKIT, "INDEXES": {"EXPLAIN_MS": 0}}
    with capture() as report:
        list(Event.objects.filter(name="name-1"))
    assert [a.fields for a in report.index_advice] == [["name"]]


def test_explaining_inside_a_transaction_leaves_it_usable(events: None) -> None:
    with transaction.atomic(), capture(explain=True) as report:
        list(Event.objects.filter(name="name-9"))  # explained in a savepoint
        assert Event.objects.filter(name="name-9").count() == 1  # the transaction works
    assert [a.fields for a in report.index_advice] == [["name"], ["name"]]  # two shapes


def test_a_failing_explain_is_counted_and_harmless(events: None, monkeypatch: Any) -> None:
    def broken(plan: Any, *args: Any) -> Any:
        raise ValueError("a plan perfkit cannot read")

    monkeypatch.setattr(advisor, "advise" if POSTGRESQL else "advise_sqlite", broken)
    before = advisor.stats["failed"]
    with transaction.atomic(), capture(explain=True) as report:
        assert len(list(Event.objects.filter(name="name-9"))) == 1
        assert Event.objects.filter(name="name-10").exists()
    assert report.index_advice == []
    assert advisor.stats["failed"] > before


def test_requests_inside_an_explaining_capture_are_explained(events: None, client: Any) -> None:
    from django.http import HttpResponse
    from django.test import RequestFactory

    from django_perfkit.middleware import PerfkitMiddleware

    def view(request: Any) -> HttpResponse:
        list(Event.objects.filter(name="name-3"))
        return HttpResponse("ok")

    with capture(explain=True) as report:
        PerfkitMiddleware(view)(RequestFactory().get("/"))
    assert [a.fields for a in report.index_advice] == [["name"]]


@pg_only
def test_perfkit_indexes_lists_scanned_tables_and_unused_indexes(events: None) -> None:
    import json
    from io import StringIO

    from django.core.management import call_command

    with connection.cursor() as cursor:
        cursor.execute("CREATE INDEX guardapp_event_kind_unused ON guardapp_event (is_public)")
    try:
        for _ in range(3):
            list(Event.objects.filter(name="nobody"))  # sequential scans
        # The statistics collector reports with a delay: wait for the scans to show.
        deadline = time.monotonic() + 10
        report: dict[str, Any] = {}
        while time.monotonic() < deadline:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_stat_clear_snapshot()")
            out = StringIO()
            call_command("perfkit_indexes", "--json", "--min-rows", "1000", stdout=out)
            report = json.loads(out.getvalue())
            if any(
                row["table"] == "guardapp_event" and row["seq_scans"] >= 3 for row in report["add"]
            ):
                break
            time.sleep(0.5)
        (event,) = [row for row in report["add"] if row["table"] == "guardapp_event"]
        assert event["model"] == "guardapp.Event" and event["seq_scans"] >= 3
        unused = [row["index"] for row in report["consider_dropping"]]
        assert "guardapp_event_kind_unused" in unused
        assert "guardapp_event_pkey" not in unused  # a primary key is never "unused"
        text = StringIO()
        call_command("perfkit_indexes", "--min-rows", "1000", stdout=text)
        assert "guardapp_event (guardapp.Event)" in text.getvalue()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP INDEX IF EXISTS guardapp_event_kind_unused")


def test_advice_keeps_to_the_scanned_tables_columns_and_skips_like() -> None:
    plan = [
        {
            "Plan": {
                "Node Type": "Limit",
                "Plans": [
                    {
                        "Node Type": "Sort",
                        "Sort Key": ["news_article.published_at DESC", "c.created_at"],
                        "Plans": [
                            {
                                "Node Type": "Seq Scan",
                                "Relation Name": "guardapp_event",
                                "Alias": "c",
                                "Filter": "((kind = 3) AND ((name)::text ~~ '%x%'::text))",
                            }
                        ],
                    }
                ],
            }
        }
    ]
    (advice,) = advisor.advise(plan, lambda table: 50_000, 10_000)
    assert advice.fields == ["kind", "created_at"]  # not the joined table's column, not LIKE
    assert "'%x%'" not in advice.plan  # the filter's literals are parameters: shape only


# --- a join's inner side, read again for each outer row ------------------------------------


def _publishers_with_events() -> list[Publisher]:
    # A semi-join of 5 publishers to 50,000 events on a column no index serves.
    return list(Publisher.objects.filter(Exists(Event.objects.filter(name=OuterRef("name")))))


@pytest.fixture
def publishers(events: None) -> None:
    Publisher.objects.bulk_create(Publisher(name=f"name-{i}") for i in range(1, 6))
    if POSTGRESQL:
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE guardapp_publisher")


def _force_nested_loop(materialize: bool = True) -> None:
    """Make PostgreSQL join with a Nested Loop (SET LOCAL: this transaction only).

    With 5 outer rows it would rather hash the 50,000 inner ones; a real plan
    picks a Nested Loop when it underestimates the outer side, which a test
    cannot arrange reliably. The advisor's EXPLAIN runs in the same
    transaction (in a savepoint), so it sees the same plan. SQLite needs
    nothing: it runs the correlated EXISTS once per publisher.
    """
    if not POSTGRESQL:
        return
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_hashjoin = off")
        cursor.execute("SET LOCAL enable_mergejoin = off")
        if not materialize:
            cursor.execute("SET LOCAL enable_material = off")


@pytest.mark.parametrize("materialize", [True, False], ids=["materialized", "rescanned"])
def test_a_join_whose_inner_side_is_a_scan_per_outer_row_gets_advice(
    publishers: None, materialize: bool
) -> None:
    with transaction.atomic():
        _force_nested_loop(materialize)
        with capture(explain=True) as report:
            assert len(_publishers_with_events()) == 5
    (advice,) = report.index_advice
    assert advice.model == "guardapp.Event"  # the inner table, not the outer Publisher
    assert advice.fields == ["name"]  # its join column
    assert advice.suggestion.startswith('add models.Index(fields=["name"], name="')
    if POSTGRESQL:
        assert "inner side of a Nested Loop: read for each of ~5 outer rows" in advice.plan
        assert ("(through a Materialize)" in advice.plan) is materialize
    else:
        assert "SCAN guardapp_event, once per outer row (correlated subquery)" in advice.plan


def test_no_join_advice_when_the_inner_side_uses_an_index(publishers: None) -> None:
    with connection.cursor() as cursor:
        cursor.execute("CREATE INDEX guardapp_event_name_join ON guardapp_event (name)")
        if POSTGRESQL:
            cursor.execute("ANALYZE guardapp_event")
    try:
        with transaction.atomic():
            _force_nested_loop()
            with capture(explain=True) as report:
                assert len(_publishers_with_events()) == 5
        assert report.index_advice == []
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP INDEX guardapp_event_name_join")


def _nested_loop(outer_rows: int, join_filter: str, inner_filter: str = "") -> list[Any]:
    inner: dict[str, Any] = {
        "Node Type": "Seq Scan",
        "Parent Relationship": "Inner",
        "Relation Name": "guardapp_event",
        "Alias": "e",
    }
    if inner_filter:
        inner["Filter"] = inner_filter
    outer = {
        "Node Type": "Seq Scan",
        "Parent Relationship": "Outer",
        "Relation Name": "guardapp_publisher",
        "Alias": "guardapp_publisher",
        "Plan Rows": outer_rows,
    }
    plan = {"Node Type": "Nested Loop", "Join Filter": join_filter, "Plans": [outer, inner]}
    return [{"Plan": plan}]


def test_join_advice_puts_the_join_column_first_and_needs_repeats() -> None:
    join = "((guardapp_publisher.name)::text = (e.name)::text)"
    (advice,) = advisor.advise(_nested_loop(40, join, "(kind = 3)"), lambda t: 50_000, 10_000)
    assert advice.fields == ["name", "kind"]  # looked up by the join column, then filtered
    assert "read for each of ~40 outer rows" in advice.plan
    # One outer row: the inner side is read once; its filter alone decides.
    (once,) = advisor.advise(_nested_loop(1, join, "(kind = 3)"), lambda t: 50_000, 10_000)
    assert once.fields == ["kind"]
    assert advisor.advise(_nested_loop(1, join), lambda t: 50_000, 10_000) == []
    # A small inner table: a scan is right.
    assert advisor.advise(_nested_loop(40, join), lambda t: 500, 10_000) == []
    # Through a function, the column is not what a plain index on it serves.
    lowered = "(lower((guardapp_publisher.name)::text) = lower((e.name)::text))"
    assert advisor.advise(_nested_loop(40, lowered), lambda t: 50_000, 10_000) == []


# --- SQLite: EXPLAIN QUERY PLAN ---------------------------------------------------------


@sqlite_only
def test_sqlite_sizes_come_from_sqlite_stat1_after_analyze(events: None) -> None:
    # Delete all but the newest 5,000 rows: max(rowid) still says 50,000 (an
    # overestimate, documented); ANALYZE's sqlite_stat1 says 5,000, below MIN_ROWS.
    newest = Event.objects.order_by("-pk").values_list("pk", flat=True)[0]
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM guardapp_event WHERE id <= %s", [newest - 5000])
    with capture(explain=True) as report:
        list(Event.objects.filter(name="name-49999"))
    (advice,) = report.index_advice
    assert advice.table_rows >= 50_000  # max(rowid)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE guardapp_event")
    advisor.forget()
    try:
        with capture(explain=True) as report:
            list(Event.objects.filter(name="name-49999"))
        assert report.index_advice == []
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM sqlite_stat1")  # the next test's table is not this one


@sqlite_only
def test_sqlite_an_automatic_index_for_a_join_gets_advice(publishers: None) -> None:
    # SQLite joins without an index by building one for the query ("AUTOMATIC
    # INDEX"), on every run. The ORM joins on keys (indexed), so raw SQL here.
    sql = (
        'SELECT "guardapp_publisher"."id" FROM "guardapp_publisher" INNER JOIN "guardapp_event" '
        'ON ("guardapp_event"."name" = "guardapp_publisher"."name")'
    )
    with capture(explain=True) as report, connection.cursor() as cursor:
        cursor.execute(sql)
        assert len(cursor.fetchall()) == 5
    (advice,) = report.index_advice
    assert advice.model == "guardapp.Event" and advice.fields == ["name"]
    assert "USING AUTOMATIC COVERING INDEX (name=?)" in advice.plan


def test_sqlite_plans_name_columns_from_the_sql() -> None:
    def rows(*details: tuple[int, int, str]) -> list[tuple[int, int, int, str]]:
        return [(node, parent, 0, detail) for node, parent, detail in details]

    table = lambda name: 50_000  # noqa: E731
    ordered = (
        'SELECT "guardapp_event"."id" FROM "guardapp_event" WHERE ("guardapp_event"."kind" = %s '
        'AND NOT ("guardapp_event"."name" = %s) AND "guardapp_event"."name" LIKE %s ESCAPE \'\\\') '
        'ORDER BY "guardapp_event"."happened" DESC LIMIT 10'
    )
    sorted_scan = rows((4, 0, "SCAN guardapp_event"), (20, 0, "USE TEMP B-TREE FOR ORDER BY"))
    (advice,) = advisor.advise_sqlite(sorted_scan, ordered, table, 10_000)
    assert advice.fields == ["kind", "happened"]  # not the negated or LIKE comparisons
    # Without a LIMIT the sort reads everything anyway: the filter alone.
    unlimited = ordered.replace(" LIMIT 10", "")
    (advice,) = advisor.advise_sqlite(sorted_scan, unlimited, table, 10_000)
    assert advice.fields == ["kind"]
    # A column inside a function call is not what a plain index serves.
    cast = (
        'SELECT "guardapp_event"."id" FROM "guardapp_event" '
        'WHERE django_datetime_cast_date("guardapp_event"."happened", %s, %s) = %s'
    )
    assert advisor.advise_sqlite(rows((2, 0, "SCAN guardapp_event")), cast, table, 10_000) == []
    # Served by an index, or no filter at all: nothing to say.
    served = rows((3, 0, "SEARCH guardapp_event USING INDEX e_kind (kind=?)"))
    assert advisor.advise_sqlite(served, ordered, table, 10_000) == []
    whole = 'SELECT COUNT(*) AS "__count" FROM "guardapp_event"'
    assert advisor.advise_sqlite(rows((3, 0, "SCAN guardapp_event")), whole, table, 10_000) == []
    # The older format (SQLite < 3.36) names the table and its alias.
    aliased = 'SELECT U0."id" FROM "guardapp_event" U0 WHERE U0."kind" = %s'
    (old,) = advisor.advise_sqlite(
        rows((2, 0, "SCAN TABLE guardapp_event AS U0")), aliased, table, 10_000
    )
    assert (old.model, old.fields) == ("guardapp.Event", ["kind"])


# --- perfkit.W012: a database the advisor cannot read ----------------------------------


def test_w012_names_each_database_the_advisor_skips() -> None:
    databases = [
        SimpleNamespace(alias="default", vendor="postgresql"),
        SimpleNamespace(alias="legacy", vendor="mysql"),
        SimpleNamespace(alias="cache", vendor="sqlite"),
    ]
    (warning,) = unsupported_databases(databases)
    assert warning.id == "perfkit.W012"
    assert "'legacy' (mysql)" in warning.msg and "default" not in warning.msg
    assert 'PERFKIT["INDEXES"]["ENABLED"] = False' in str(warning.hint)
    assert unsupported_databases(databases[::2]) == []


def test_w012_is_registered_and_off_with_the_advisor(monkeypatch: Any, settings: Any) -> None:
    # The backend's vendor as a MySQL or Oracle wrapper would say it (no connection needed).
    monkeypatch.setattr(connections["other"], "vendor", "oracle")
    found = [m for m in run_checks(tags=[Tags.compatibility]) if m.id == "perfkit.W012"]
    assert len(found) == 1 and "'other' (oracle)" in found[0].msg
    settings.PERFKIT = {**settings.PERFKIT, "INDEXES": {"ENABLED": False}}
    assert check_index_advisor() == []
    settings.PERFKIT = {**settings.PERFKIT, "INDEXES": {}, "ENABLED": False}
    assert check_index_advisor() == []


def test_w012_silent_on_the_suites_databases() -> None:
    assert check_index_advisor() == []  # PostgreSQL or SQLite, both read


def test_the_advisor_explains_nothing_on_another_database() -> None:
    # A stand-in for an Oracle connection: explain_after must not touch it at all
    # (object() has no cursor; anything but the vendor check would fail and count).
    before = dict(advisor.stats)
    oracle = SimpleNamespace(vendor="oracle", connection=object(), alias="x")
    assert advisor.explain_after(oracle, "SELECT 1", None, None, "SELECT ?") == []
    assert advisor.stats == before


def test_no_advice_for_a_column_inside_a_function_call() -> None:
    # As PostgreSQL prints Django's iexact and __date lookups: an index on the
    # column serves neither (and "::text))::date" names no column "text" or "date").
    def scan(condition: str) -> list[Any]:
        node = {"Node Type": "Seq Scan", "Relation Name": "guardapp_event", "Filter": condition}
        return [{"Plan": node}]

    for condition in (
        "(upper((name)::text) = 'X'::text)",
        "(((happened AT TIME ZONE 'UTC'::text))::date = '2020-01-01'::date)",
        "(COALESCE(kind, 0) = 3)",
    ):
        assert advisor.advise(scan(condition), lambda t: 50_000, 10_000) == [], condition
    (advice,) = advisor.advise(
        scan("((COALESCE(kind, 0) = 3) AND ((name)::text = 'a'::text))"),
        lambda t: 50_000,
        10_000,
    )
    assert advice.fields == ["name"]


def test_sqlite_an_inner_loop_scan_is_advised_on_its_join_column() -> None:
    # With automatic indexes off (PRAGMA automatic_index), SQLite scans a join's
    # inner table once per outer row; its join column is on either side of ON.
    sql = (
        'SELECT "guardapp_publisher"."id" FROM "guardapp_publisher" INNER JOIN "guardapp_event" '
        'ON ("guardapp_publisher"."name" = "guardapp_event"."name") '
        'WHERE ("guardapp_event"."kind" = %s AND "guardapp_publisher"."id" > %s)'
    )
    sizes = {"guardapp_event": 50_000, "guardapp_publisher": 50}.get
    plan = [(3, 0, 0, "SCAN guardapp_publisher"), (5, 0, 0, "SCAN guardapp_event")]
    (advice,) = advisor.advise_sqlite(plan, sql, sizes, 10_000)
    assert (advice.model, advice.fields) == ("guardapp.Event", ["name", "kind"])
    assert "once per outer row (inner loop of a join)" in advice.plan
    # The outer loop's table: read once, its join column is not a filter.
    outer = [(3, 0, 0, "SCAN guardapp_event"), (5, 0, 0, "SCAN guardapp_publisher")]
    (advice,) = advisor.advise_sqlite(outer, sql, sizes, 10_000)
    assert (advice.table, advice.fields) == ("guardapp_event", ["kind"])


def test_the_collector_and_the_advisor_agree_on_vendors() -> None:
    from django_perfkit.collectors.db import ADVISED_VENDORS
    from django_perfkit.queries.indexes import VENDORS

    assert tuple(ADVISED_VENDORS) == tuple(VENDORS)


def test_a_boolean_compared_to_a_parameter_is_a_condition_not_a_column() -> None:
    # Django 6.1 writes `"flag" = %s` with True on SQLite where 5.2 wrote `"flag"`:
    # both are the same constant condition (a partial index's), read alike.
    from django_perfkit.queries.indexes import _inline_booleans

    sql = 'SELECT 1 FROM "e" WHERE ("e"."kind" = %s AND "e"."is_public" = %s AND "e"."x" = %s)'
    assert _inline_booleans(sql, [7, True, False]) == (
        'SELECT 1 FROM "e" WHERE ("e"."kind" = %s AND "e"."is_public" AND NOT "e"."x")'
    )
    flipped = _inline_booleans('SELECT 1 FROM "e" WHERE "e"."is_public" = %s', (False,))
    assert flipped == 'SELECT 1 FROM "e" WHERE NOT "e"."is_public"'
    assert _inline_booleans(sql, [7, 1, 0]) == sql  # numbers are values, not conditions
