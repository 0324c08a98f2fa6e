"""The corpus: one function per scenario, each doing ORM work and using its results.

17 positives (a query per row of an outer loop: every one should be flagged),
6 negatives (nothing to fix: none should be) and 3 borderline cases (repeated
queries that are not a row-by-row read: reported, not scored). After the
research corpus (``query-guard.md`` §8). Imports Django only.
"""

from __future__ import annotations

from collections.abc import Callable

from django.db import connection
from django.db.models import Count, prefetch_related_objects
from django.template import Context, Template

from .models import Author, Book, Comment, Profile, Publisher, Tag

PUBLISHERS = 5
BOOKS_PER_AUTHOR = 2
TAGS = 3
COMMENTS = 5


def seed() -> None:
    """5 publishers, 5 authors (one each) with a profile, 10 books with 2 tags, 5 comments."""
    from django.contrib.contenttypes.models import ContentType

    tags = [Tag.objects.create(name=f"tag {i}") for i in range(TAGS)]
    books = []
    for i in range(PUBLISHERS):
        publisher = Publisher.objects.create(name=f"publisher {i}")
        author = Author.objects.create(name=f"author {i}", publisher=publisher)
        Profile.objects.create(author=author, bio=f"bio {i}")
        for j in range(BOOKS_PER_AUTHOR):
            n = i * BOOKS_PER_AUTHOR + j
            book = Book.objects.create(title=f"book {n}", summary="…" * 50, author=author)
            book.tags.set([tags[n % TAGS], tags[(n + 1) % TAGS]])
            books.append(book)
    book_type = ContentType.objects.get_for_model(Book)
    for i in range(COMMENTS):
        Comment.objects.create(content_type=book_type, object_id=books[i].pk, body=f"c{i}")


# Positives --------------------------------------------------------------------------


def fk_forward() -> object:
    return [b.author.name for b in Book.objects.all()]


def fk_reverse_all() -> object:
    return [[b.title for b in a.books.all()] for a in Author.objects.all()]


def m2m_all() -> object:
    return [[t.name for t in b.tags.all()] for b in Book.objects.all()]


def o2o_reverse() -> object:
    return [a.profile.bio for a in Author.objects.all()]


def deferred_field() -> object:
    return [b.title for b in Book.objects.only("id")]


def related_count() -> object:
    return [a.books.count() for a in Author.objects.all()]


def related_exists() -> object:
    return [a.books.exists() for a in Author.objects.all()]


def related_first() -> object:
    return [a.books.first() for a in Author.objects.all()]


def get_in_loop() -> object:
    pks = list(Book.objects.values_list("pk", flat=True))
    return [Book.objects.get(pk=pk).title for pk in pks]


def filter_in_loop() -> object:
    return [list(Book.objects.filter(author=a)) for a in Author.objects.all()]


def values_list_in_loop() -> object:
    return [
        list(Book.objects.filter(author=a).values_list("title", flat=True))
        for a in Author.objects.all()
    ]


def second_hop() -> object:
    return [b.author.publisher.name for b in Book.objects.select_related("author")]


def generic_fk() -> object:
    return [str(c.content_object) for c in Comment.objects.all()]


def aggregate_in_loop() -> object:
    return [Book.objects.filter(author=a).aggregate(Count("id")) for a in Author.objects.all()]


def raw_sql_in_loop() -> object:
    titles = []
    with connection.cursor() as cursor:
        for a in Author.objects.all():
            cursor.execute("SELECT title FROM guardapp_book WHERE author_id = %s", [a.pk])
            titles.append(cursor.fetchall())
    return titles


def prefetch_objects_in_loop() -> object:
    titles = []
    for a in Author.objects.all():
        prefetch_related_objects([a], "books")
        titles.append([b.title for b in a.books.all()])
    return titles


def template_loop() -> object:
    template = Template("{% for b in books %}{{ b.author.name }}{% endfor %}")
    return template.render(Context({"books": Book.objects.all()}))


# Negatives --------------------------------------------------------------------------


def get_then_fk() -> object:
    return Book.objects.get(title="book 0").author.name


def first_then_fk() -> object:
    book = Book.objects.order_by("pk").first()
    assert book is not None
    return book.author.name


def one_access_on_list0() -> object:
    return list(Book.objects.all())[0].author.name


def select_related_covered() -> object:
    return [b.author.name for b in Book.objects.select_related("author")]


def prefetch_related_covered() -> object:
    return [
        [[t.name for t in b.tags.all()] for b in a.books.all()]
        for a in Author.objects.prefetch_related("books", "books__tags")
    ]


def null_fk() -> object:
    return [b.editor for b in Book.objects.all()]


# Borderline -------------------------------------------------------------------------


def two_gets_two_lines() -> object:
    first = Book.objects.get(title="book 0")
    second = Book.objects.get(title="book 1")
    return first.title, second.title


def _book(title: str) -> Book:
    return Book.objects.get(title=title)


def two_gets_via_helper() -> object:
    return _book("book 0").title, _book("book 1").title


def create_in_loop() -> object:
    return [Tag.objects.create(name=f"new {i}").pk for i in range(5)]


Scenario = Callable[[], object]

POSITIVE: dict[str, Scenario] = {
    f.__name__: f
    for f in (
        fk_forward,
        fk_reverse_all,
        m2m_all,
        o2o_reverse,
        deferred_field,
        related_count,
        related_exists,
        related_first,
        get_in_loop,
        filter_in_loop,
        values_list_in_loop,
        second_hop,
        generic_fk,
        aggregate_in_loop,
        raw_sql_in_loop,
        prefetch_objects_in_loop,
        template_loop,
    )
}
NEGATIVE: dict[str, Scenario] = {
    f.__name__: f
    for f in (
        get_then_fk,
        first_then_fk,
        one_access_on_list0,
        select_related_covered,
        prefetch_related_covered,
        null_fk,
    )
}
BORDERLINE: dict[str, Scenario] = {
    f.__name__: f for f in (two_gets_two_lines, two_gets_via_helper, create_in_loop)
}
ALL: dict[str, Scenario] = {**POSITIVE, **NEGATIVE, **BORDERLINE}
