"""The index advisor, against a real PostgreSQL table of 50,000 rows."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
from django.db import connection, transaction

from django_perfkit.queries import capture
from django_perfkit.queries import indexes as advisor
from tests.guardapp.models import Event, Publisher

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="EXPLAIN on PostgreSQL"),
]


@pytest.fixture
def events() -> Iterator[None]:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO guardapp_event (name, kind, happened, is_public) "
            "SELECT 'name-' || g, g % 50, now() - (g || ' minutes')::interval, g % 3 = 0 "
            "FROM generate_series(1, 50000) g"
        )
        cursor.execute("ANALYZE guardapp_event")
    advisor.forget()
    yield
    advisor.forget()


def test_a_filter_on_an_unindexed_column_of_a_large_table_gets_advice(events: None) -> None:
    with capture(explain=True) as report:
        list(Event.objects.filter(name="name-77"))
    (advice,) = report.index_advice
    assert advice.model == "guardapp.Event"
    assert advice.fields == ["name"]
    assert advice.table_rows >= 40_000  # PostgreSQL's estimate
    assert advice.location is not None and advice.location.startswith("tests/test_indexes.py:")
    assert "Seq Scan on guardapp_event" in advice.plan
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
        cursor.execute("ANALYZE guardapp_event")
    try:
        with capture(explain=True) as report:
            list(Event.objects.filter(name="name-77"))
        assert report.index_advice == []
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP INDEX guardapp_event_name_test")


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

    monkeypatch.setattr(advisor, "advise", broken)
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
