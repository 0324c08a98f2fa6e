"""N+1 detection: every pattern the issue lists is found and named, with its fix;
the patterns that are not N+1s are not."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.models import Count, Prefetch, prefetch_related_objects
from django.template import Context, Template

from django_perfkit.queries import capture
from django_perfkit.queries import guard as guard_module
from tests.guardapp.models import Book, Label, Note, Profile, Publisher, Writer

pytestmark = pytest.mark.django_db


@pytest.fixture
def library() -> None:
    labels = [Label.objects.create(name=f"l{i}") for i in range(3)]
    for i in range(4):
        publisher = Publisher.objects.create(name=f"p{i}")
        writer = Writer.objects.create(name=f"w{i}", publisher=publisher)
        Profile.objects.create(writer=writer, bio="b")
        for j in range(2):
            book = Book.objects.create(title=f"b{i}{j}", writer=writer)
            book.labels.set(labels[:2])
            Note.objects.create(
                content_type=ContentType.objects.get_for_model(Book),
                object_id=book.pk,
                text="n",
            )


def only(report: Any) -> Any:
    assert len(report.nplusone) == 1, report
    return report.nplusone[0]


def test_forward_foreign_key(library: None) -> None:
    with capture() as report:
        books = Book.objects.all()
        names = [book.writer.name for book in books]
    assert len(names) == 8
    finding = only(report)
    assert (finding.model, finding.field, finding.count) == ("guardapp.Book", "writer", 8)
    assert finding.relation == "guardapp.Book.writer"
    assert finding.location.startswith("tests/test_nplusone.py:")
    assert finding.origin is not None
    assert finding.origin.startswith("tests/test_nplusone.py:")
    assert finding.origin.endswith(" in test_forward_foreign_key")
    assert finding.suggestion.startswith('select_related("writer")')
    assert "guardapp_writer" in finding.fingerprint


def test_reverse_foreign_key(library: None) -> None:
    with capture() as report:
        titles = [[b.title for b in w.books.all()] for w in Writer.objects.all()]
    assert len(titles) == 4
    finding = only(report)
    assert finding.relation == "guardapp.Writer.books"
    assert finding.count == 4
    assert finding.suggestion.startswith('prefetch_related("books")')


def test_many_to_many(library: None) -> None:
    with capture() as report:
        for book in Book.objects.all():
            list(book.labels.all())
    finding = only(report)
    assert finding.relation == "guardapp.Book.labels"
    assert finding.suggestion.startswith('prefetch_related("labels")')


def test_many_to_many_reverse_side(library: None) -> None:
    with capture() as report:
        for label in Label.objects.all():
            list(label.books.all())
    assert only(report).relation == "guardapp.Label.books"


def test_reverse_one_to_one(library: None) -> None:
    with capture() as report:
        bios = [w.profile.bio for w in Writer.objects.all()]
    assert bios == ["b"] * 4
    finding = only(report)
    assert finding.relation == "guardapp.Writer.profile"
    assert finding.suggestion.startswith('select_related("profile")')


def test_deferred_field(library: None) -> None:
    with capture() as report:
        titles = [b.title for b in Book.objects.only("id")]
    assert len(titles) == 8
    finding = only(report)
    assert finding.relation == "guardapp.Book.title"
    assert "defer()/only()" in finding.suggestion


@pytest.mark.parametrize(
    ("call", "fix"),
    [
        (lambda w: w.books.count(), 'annotate(books_count=Count("books"))'),
        (lambda w: w.books.exists(), 'annotate(books_count=Count("books"))'),
        (lambda w: w.books.first(), 'prefetch_related("books")'),
        (lambda w: w.books.aggregate(n=Count("id")), 'annotate() the aggregate through "books"'),
    ],
    ids=["count", "exists", "first", "aggregate"],
)
def test_related_manager_calls(library: None, call: Any, fix: str) -> None:
    with capture() as report:
        for writer in Writer.objects.all():
            call(writer)
    finding = only(report)
    assert finding.relation == "guardapp.Writer.books"
    assert finding.count == 4
    assert finding.suggestion.startswith(fix), finding.suggestion


def test_get_in_a_loop(library: None) -> None:
    ids = list(Book.objects.values_list("pk", flat=True))
    with capture() as report:
        books = [Book.objects.get(pk=pk) for pk in ids]
    assert len(books) == 8
    finding = only(report)
    assert finding.kind == "query" and finding.field is None
    assert finding.model == "guardapp.Book"
    assert finding.count == 8
    assert "in_bulk" in finding.suggestion


def test_filter_in_a_loop_names_the_parent_queryset(library: None) -> None:
    with capture() as report:
        writers = Writer.objects.order_by("name")
        for writer in writers:
            list(Book.objects.filter(writer=writer))
    finding = only(report)
    assert finding.count == 4
    assert finding.origin is not None and "test_filter_in_a_loop" in finding.origin
    assert finding.suggestion.startswith('prefetch_related("books") on the guardapp.Writer')


def test_values_list_in_a_loop(library: None) -> None:
    with capture() as report:
        for writer in Writer.objects.all():
            list(Book.objects.filter(writer=writer).values_list("title", flat=True))
    assert only(report).count == 4


def test_aggregate_in_a_loop(library: None) -> None:
    with capture() as report:
        for writer in Writer.objects.all():
            Book.objects.filter(writer=writer).aggregate(n=Count("id"))
    finding = only(report)
    assert finding.suggestion.startswith('annotate(books_count=Count("books"))')


def test_second_hop_after_select_related(library: None) -> None:
    with capture() as report:
        names = [b.writer.publisher.name for b in Book.objects.select_related("writer")]
    assert len(names) == 8
    finding = only(report)
    assert finding.relation == "guardapp.Writer.publisher"
    assert finding.suggestion.startswith('select_related("writer__publisher")')


def test_generic_foreign_key(library: None) -> None:
    ContentType.objects.get_for_model(Book)  # the content type cache, warm
    with capture() as report:
        targets = [note.target for note in Note.objects.all()]
    assert len(targets) == 8
    finding = only(report)
    assert finding.relation == "guardapp.Note.target"
    assert finding.suggestion.startswith('prefetch_related("target")')


def test_raw_sql_in_a_loop(library: None) -> None:
    with capture() as report:
        for writer in Writer.objects.all():
            with connection.cursor() as cursor:
                cursor.execute("SELECT title FROM guardapp_book WHERE writer_id = %s", [writer.pk])
                cursor.fetchall()
    finding = only(report)
    assert finding.model is None
    assert finding.fingerprint == "SELECT title FROM guardapp_book WHERE writer_id = ?"
    assert "before the loop" in finding.suggestion


def test_prefetch_related_objects_in_a_loop(library: None) -> None:
    with capture() as report:
        for writer in Writer.objects.all():
            prefetch_related_objects([writer], "books")
    finding = only(report)
    assert finding.suggestion.startswith('call prefetch_related_objects(all_instances, "books")')


def test_template_loop(library: None) -> None:
    template = Template("{% for b in books %}{{ b.writer.name }},{% endfor %}")
    with capture() as report:
        text = template.render(Context({"books": Book.objects.all()}))
    assert text.count(",") == 8
    finding = only(report)
    assert finding.relation == "guardapp.Book.writer"
    assert "test_template_loop" in finding.location


# --- not N+1s ------------------------------------------------------------------


def test_get_then_foreign_key(library: None) -> None:
    with capture() as report:
        book = Book.objects.get(title="b00")
        _ = book.writer.name
    assert report.count == 2
    assert report.nplusone == []


def test_first_then_foreign_key(library: None) -> None:
    with capture() as report:
        book = Book.objects.first()
        assert book is not None
        _ = book.writer.name
    assert report.nplusone == []


def test_one_access_on_the_first_of_a_list(library: None) -> None:
    with capture() as report:
        _ = list(Book.objects.all())[0].writer.name
    assert report.nplusone == []


def test_select_related_and_prefetch_related(library: None) -> None:
    with capture() as report:
        for book in Book.objects.select_related("writer__publisher").prefetch_related("labels"):
            _ = book.writer.publisher.name
            list(book.labels.all())
        for writer in Writer.objects.prefetch_related(Prefetch("books")):
            writer.books.count()
    assert report.count == 4
    assert report.nplusone == []
    assert report.unused_prefetches == []


def test_null_foreign_keys(library: None) -> None:
    with capture() as report:
        editors = [b.editor for b in Book.objects.all()]
    assert editors == [None] * 8
    assert report.nplusone == []


def test_the_same_query_from_two_lines_is_not_an_n_plus_one(library: None) -> None:
    def book(title: str) -> Book:
        return Book.objects.get(title=title)  # one line, reached from two

    with capture() as report:
        book("b00")
        book("b01")
    assert report.nplusone == []


def test_writes_in_a_loop_are_not_reported(library: None) -> None:
    with capture() as report:
        for i in range(5):
            Label.objects.create(name=f"new{i}")
    assert report.nplusone == []


def test_threshold(library: None) -> None:
    with capture(threshold=5) as report:
        [b.writer.name for b in Book.objects.all()[:4]]
    assert report.nplusone == []
    with capture(threshold=4) as report:
        [b.writer.name for b in Book.objects.all()[:4]]
    assert only(report).count == 4


def test_nplusone_false_only_counts(library: None) -> None:
    with capture(nplusone=False) as report:
        [b.writer.name for b in Book.objects.all()]
    assert report.count == 9
    assert report.nplusone == []


# --- unused prefetches -----------------------------------------------------------


def test_unused_prefetch_is_reported(library: None) -> None:
    with capture() as report:
        books = list(Book.objects.prefetch_related("labels", "writer"))
        [b.writer.name for b in books]
    assert report.nplusone == []
    assert [(u.model, u.lookup) for u in report.unused_prefetches] == [("guardapp.Book", "labels")]
    assert "prefetch_related('labels')" in str(report.unused_prefetches[0])


def test_a_prefetch_read_by_one_instance_is_used(library: None) -> None:
    with capture() as report:
        books = list(Book.objects.prefetch_related("labels"))
        list(books[3].labels.all())
    assert report.unused_prefetches == []


def test_an_empty_queryset_prefetches_nothing_to_report(library: None) -> None:
    with capture() as report:
        list(Book.objects.filter(title="none").prefetch_related("labels"))
    assert report.unused_prefetches == []


def test_prefetched_instances_pickle_without_perfkit_state(library: None) -> None:
    import pickle

    with capture():
        books = list(Book.objects.prefetch_related("labels"))
    restored = pickle.loads(pickle.dumps(books))
    assert type(restored[0]._prefetched_objects_cache) is dict
    assert len(restored[0].labels.all()) == 2


# --- scope --------------------------------------------------------------------


def test_querysets_are_unwrapped_when_the_last_guard_closes(library: None) -> None:
    from django.db.models import QuerySet

    if guard_module._open:
        pytest.skip("a guard around the test is open (pytest --perfkit-nplusone)")
    guard_module.uninstall()  # a request through the middleware leaves them installed
    original = QuerySet._fetch_all
    with capture():
        assert guard_module.installed()
        assert QuerySet._fetch_all is not original
        with capture():
            pass
        assert guard_module.installed()
    assert not guard_module.installed()
    assert QuerySet._fetch_all is original


def test_an_inner_scope_reports_to_the_outer_one(library: None) -> None:
    with capture() as outer:
        with capture() as inner:
            [b.writer.name for b in Book.objects.all()]
        [w.profile.bio for w in Writer.objects.all()]
    assert [f.relation for f in inner.nplusone] == ["guardapp.Book.writer"]
    assert sorted(f.relation for f in outer.nplusone) == [
        "guardapp.Book.writer",
        "guardapp.Writer.profile",
    ]


def test_report_text_names_the_finding(library: None) -> None:
    with capture() as report:
        [b.writer.name for b in Book.objects.all()]
    text = str(report)
    assert "N+1: guardapp.Book.writer x8" in text
    assert 'fix: select_related("writer")' in text


def test_the_queries_explained_per_scope_are_bounded(library: None, monkeypatch: Any) -> None:
    monkeypatch.setattr(guard_module, "MAX_EVENTS", 3)
    with capture() as report:
        [b.writer.name for b in Book.objects.all()]
    assert report.count == 9  # every query is still counted
    assert only(report).count == 2  # the first three explained: the list and two loads


def test_one_helper_called_from_two_lines_through_library_code_is_not_an_n_plus_one(
    library: None,
) -> None:
    from django.test.utils import override_settings

    def book(title: str) -> Book:
        return Book.objects.get(title=title)

    # Library frames between the helper and its two callers (as call_command or a
    # template's render put there): the places still differ.
    wrapped = book
    for _ in range(6):
        wrapped = override_settings()(wrapped)
    with capture() as report:
        wrapped("b00")
        wrapped("b01")
    assert report.count == 2
    assert report.nplusone == []


def test_the_same_query_with_the_same_values_again_is_a_duplicate_not_an_n_plus_one(
    library: None,
) -> None:
    with capture() as report:
        for _ in range(3):  # as the admin's changelist counts twice
            Book.objects.filter(title__startswith="b").count()
    assert report.duplicates == 2
    assert report.nplusone == []
