"""``django_perfkit.queries``: fingerprints and ``capture()``."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test import Client, override_settings
from model_bakery import baker

from django_perfkit.queries import capture, fingerprint
from django_perfkit.record import current_record, record_request, timer
from testproject.news.models import Article, Author, Category
from tests.settings import KEY_PREFIX

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            'SELECT "a"."id" FROM "a" WHERE "a"."id" IN (%s, %s, %s)',
            'SELECT "a"."id" FROM "a" WHERE "a"."id" IN (...)',
        ),
        (
            'SELECT "a"."id" FROM "a" WHERE "a"."id" IN (%s)',
            'SELECT "a"."id" FROM "a" WHERE "a"."id" IN (...)',
        ),
        (
            "SELECT * FROM t1 WHERE x = 5 AND y = 'it''s' LIMIT 21",
            "SELECT * FROM t1 WHERE x = ? AND y = ? LIMIT ?",
        ),
        ('SAVEPOINT "s140_x1"', "SAVEPOINT ?"),
        ('RELEASE SAVEPOINT "s9_x12"', "RELEASE SAVEPOINT ?"),
        (
            'INSERT INTO "t" ("a", "b") VALUES (%s, %s), (%s, %s) RETURNING "t"."id"',
            'INSERT INTO "t" ("a", "b") VALUES (...) RETURNING "t"."id"',
        ),
        ("SELECT $1::int, col2 FROM t WHERE a = :name", "SELECT ?::int, col2 FROM t WHERE a = ?"),
        ("SELECT  a\n  FROM   t", "SELECT a FROM t"),
    ],
)
def test_fingerprint_keeps_the_shape_and_drops_the_values(sql: str, expected: str) -> None:
    assert fingerprint(sql) == expected


def test_fingerprints_differ_when_the_shape_does() -> None:
    assert fingerprint("SELECT a FROM t WHERE b = %s") != fingerprint(
        "SELECT a FROM t WHERE c = %s"
    )
    assert fingerprint('SELECT "t2"."x" FROM "t2"') == 'SELECT "t2"."x" FROM "t2"'


def _articles(n: int) -> list[Article]:
    category, author = baker.make(Category), baker.make(Author)
    return baker.make(Article, category=category, author=author, _quantity=n)


def test_capture_counts_queries_duplicates_and_shapes() -> None:
    articles = _articles(3)
    with capture() as report:
        for article in Article.objects.filter(pk__in=[a.pk for a in articles]).order_by("pk"):
            article.author.name  # noqa: B018  (an N+1 on purpose)
        Article.objects.filter(pk=articles[0].pk).exists()
        Article.objects.filter(pk=articles[0].pk).exists()
    assert report.count == 6
    assert report.duplicates == 3  # two more author loads of the same row, one exists()
    shapes = report.fingerprints()
    assert max(shapes.values()) == 3  # the author SELECT, whatever the pk
    text = str(report)
    assert "6 queries" in text and "3 x SELECT" in text
    assert "test_queries.py" in text  # where: the line in this file


def test_capture_counts_beyond_djangos_query_log() -> None:
    with capture() as report, connection.cursor() as cursor:
        for _ in range(9_100):
            cursor.execute("SELECT 1")
    assert report.count == 9_100
    assert len(report.queries) + report.dropped == 9_100


def test_capture_inside_a_request_adds_to_the_request() -> None:
    _articles(1)
    with record_request() as outer:
        Article.objects.count()
        with capture() as inner:
            Article.objects.count()
            Article.objects.exists()
        Article.objects.count()
    assert inner.count == 2
    assert outer.db.count == 4


def test_capture_needs_the_collector() -> None:
    with (
        override_settings(PERFKIT={"KEY_PREFIX": KEY_PREFIX, "COLLECT_QUERIES": False}),
        pytest.raises(ImproperlyConfigured, match="COLLECT_QUERIES"),
        capture(),
    ):
        pass


def test_what_a_capture_records_joins_the_request_and_waits_for_its_response() -> None:
    ran: list[str] = []
    with record_request() as outer:
        with capture():
            with timer("inside"):
                pass
            current = current_record()
            assert current is not None and current is not outer
            current.after_response = [lambda: ran.append("after")]
        assert ran == []  # not at the end of the capture: at the end of the request
        assert outer.sections["inside"].count == 1
    assert ran == ["after"]


def test_capture_counts_the_queries_of_requests_made_inside_it(
    client: Client, settings: Any
) -> None:
    settings.PERFKIT = {**settings.PERFKIT, "QUERY_GUARD": {"MODE": "log"}}
    _articles(3)
    with capture() as report:
        response = client.get("/articles/naive/")
    assert response.status_code == 200
    # The naive list: count + page, then author, category, tags and comment
    # count per row; served by the middleware's own record, reported here too.
    assert report.count == 2 + 4 * 3
