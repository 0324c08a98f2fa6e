"""``manage.py seed``: fill the demo site with deterministic fake news.

Defaults: 2,000 articles, 20,000 comments (10 x articles), 8 categories, 40 authors,
30 tags, 0-4 tags per article, publication dates over the last two years, and comments
skewed towards a few popular articles (so some rows are "hot"). Rows are built in memory
with model-bakery (``baker.prepare``) from a ``random.Random(seed)`` and written with
``bulk_create``, all in one transaction. Each comment is written twice: to ``Comment``
and to its deliberately unindexed copy ``UnindexedComment`` (``/comments/naive/``), so
the default 20,000 are above the index advisor's ``MIN_ROWS`` (10,000) on both.

It also creates the demo users ``demo`` / ``demo-password`` and the DEMO-ONLY superuser
``admin`` / ``admin-password`` when they are missing.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, models, transaction
from django.utils import timezone
from django.utils.text import slugify
from model_bakery import baker

from testproject.news.models import (
    Article,
    ArticleStats,
    Author,
    Category,
    Comment,
    Tag,
    UnindexedComment,
)

DEMO_USER = ("demo", "demo-password")
DEMO_ADMIN = ("admin", "admin-password")

BATCH_SIZE = 1000
N_AUTHORS = 40
MAX_TAGS_PER_ARTICLE = 4
PUBLISHED_SHARE = 0.95
APPROVED_SHARE = 0.92
SPREAD = timedelta(days=730)

CATEGORIES = [
    "World", "Politics", "Business", "Technology", "Science", "Health", "Sport", "Culture",
]  # fmt: skip
TAGS = [
    "Elections", "Climate", "Economy", "AI", "Space", "Football", "Tennis", "Film", "Music",
    "Books", "Energy", "Housing", "Education", "Transport", "Crime", "Markets", "Startups",
    "Security", "Privacy", "Medicine", "Food", "Travel", "Weather", "Oceans", "Wildlife",
    "Cities", "Labour", "Trade", "Art", "Open Source",
]  # fmt: skip
FIRST_NAMES = [
    "Ada", "Alan", "Grace", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances", "Guido",
    "Radia", "Tim", "Hedy", "Edsger", "Katherine", "Donald", "Sophie", "John", "Karen", "Niklaus",
]  # fmt: skip
LAST_NAMES = [
    "Lovelace", "Turing", "Hopper", "Torvalds", "Hamilton", "Thompson", "Liskov", "Ritchie",
    "Allen", "van Rossum", "Perlman", "Berners-Lee", "Lamarr", "Dijkstra", "Johnson", "Knuth",
    "Wilson", "McCarthy", "Jones", "Wirth",
]  # fmt: skip
ADJECTIVES = [
    "New", "Surprising", "Quiet", "Major", "Local", "Global", "Record", "Unexpected", "Bold",
    "Late", "Early", "Hidden", "Rising", "Falling", "Historic", "Fresh", "Rare", "Slow", "Fast",
]  # fmt: skip
SUBJECTS = [
    "council", "startup", "research team", "city", "minister", "orchestra", "league", "court",
    "central bank", "museum", "hospital", "university", "port", "farmers", "engineers",
    "volunteers", "regulator", "observatory", "library", "festival",
]  # fmt: skip
VERBS = [
    "announces", "delays", "rethinks", "wins", "loses", "launches", "questions", "backs",
    "rejects", "celebrates", "tests", "opens", "closes", "expands", "reviews", "measures",
]  # fmt: skip
OBJECTS = [
    "budget plan", "new rules", "cache layer", "bridge project", "summer season", "data deal",
    "rate limits", "night trains", "solar farm", "reading list", "record attempt", "merger",
    "water supply", "query planner", "open data portal", "transfer window", "peace talks",
]  # fmt: skip
WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "on",
    "with",
    "as",
    "was",
    "at",
    "by",
    "from",
    "this",
    "be",
    "are",
    "it",
    "an",
    "or",
    "report",
    "city",
    "data",
    "market",
    "team",
    "plan",
    "year",
    "people",
    "work",
    "time",
    "week",
    "government",
    "study",
    "local",
    "said",
    "new",
    "first",
    "last",
    "after",
    "before",
    "during",
    "while",
    "because",
    "however",
    "million",
    "percent",
    "growth",
    "season",
    "results",
    "question",
    "answer",
    "system",
    "network",
    "users",
    "cache",
    "query",
    "latency",
    "traffic",
    "server",
    "request",
    "response",
    "database",
    "index",
    "rate",
    "limit",
    "budget",
    "vote",
    "research",
    "science",
    "health",
    "school",
    "energy",
    "climate",
    "river",
    "road",
    "train",
    "music",
    "film",
    "book",
]
COMMENT_OPENERS = [
    "Great piece.", "I disagree.", "Interesting.", "Finally someone says it.", "Source?",
    "Well written.", "This misses the point.", "Thanks for this.", "Not convinced.", "Spot on.",
]  # fmt: skip


@contextmanager
def _auto_now_add_suspended(model: type[models.Model], field_name: str) -> Iterator[None]:
    """Let explicit values through an ``auto_now_add`` field while seeding (one process)."""
    field = model._meta.get_field(field_name)
    assert isinstance(field, models.DateField)
    previous = field.auto_now_add
    field.auto_now_add = False
    try:
        yield
    finally:
        field.auto_now_add = previous


def _sentence(rng: random.Random, low: int, high: int) -> str:
    words = rng.choices(WORDS, k=rng.randint(low, high))
    return " ".join(words).capitalize() + "."


def _paragraph(rng: random.Random) -> str:
    return " ".join(_sentence(rng, 6, 16) for _ in range(rng.randint(3, 6)))


class Command(BaseCommand):
    help = (
        "Seed the demo news site with deterministic fake data "
        "(default: 2,000 articles and 20,000 comments)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--articles", type=int, default=2000, help="Articles to create (default: 2000)."
        )
        parser.add_argument(
            "--comments",
            type=int,
            default=None,
            help="Comments to create (default: 10 x --articles).",
        )
        parser.add_argument(
            "--if-empty",
            action="store_true",
            help="Do nothing when articles already exist (for `make demo`).",
        )
        parser.add_argument(
            "--seed", type=int, default=42, help="Random seed, for repeatable data (default: 42)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        n_articles: int = options["articles"]
        n_comments: int = (
            options["comments"] if options["comments"] is not None else (10 * n_articles)
        )
        if n_articles < 0 or n_comments < 0:
            raise CommandError("--articles and --comments must be >= 0")
        if options["if_empty"] and Article.objects.exists():
            self.stdout.write(
                f"Articles already exist ({Article.objects.count()}); --if-empty: skipping seed."
            )
            return

        started = time.perf_counter()
        seed: int = options["seed"]
        rng = random.Random(seed)
        baker.seed(seed)  # anything model-bakery generates itself is repeatable too
        now = timezone.now()

        with transaction.atomic():
            demo_user = self._ensure_users()
            categories = self._ensure_named(Category, CATEGORIES)
            tags = self._ensure_named(Tag, TAGS)
            authors = self._ensure_authors(rng, demo_user)
            articles = self._create_articles(rng, now, n_articles, categories, authors)
            n_links = self._tag_articles(rng, articles, tags)
            created_comments = self._create_comments(rng, now, n_comments, articles)

        self._analyze()
        elapsed = time.perf_counter() - started
        self.stdout.write(
            self.style.SUCCESS(
                f"Seeded {len(articles)} articles, {created_comments} comments, "
                f"{n_links} article-tag links ({len(categories)} categories, "
                f"{len(authors)} authors, {len(tags)} tags) in {elapsed:.2f} s."
            )
        )

    def _analyze(self) -> None:
        """Refresh planner statistics after a bulk load (PostgreSQL), so the first
        requests get the same plans as a long-running site instead of guesses."""
        if connection.vendor != "postgresql":
            return
        tables = [
            model._meta.db_table
            for model in (
                Category,
                Author,
                Tag,
                Article,
                Article.tags.through,
                Comment,
                UnindexedComment,
            )
        ]
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE " + ", ".join(connection.ops.quote_name(t) for t in tables))

    # --- reference data ----------------------------------------------------------------

    def _ensure_users(self) -> AbstractBaseUser:
        User = get_user_model()
        username, password = DEMO_USER
        demo = User.objects.filter(username=username).first()
        if demo is None:
            demo = User.objects.create_user(username=username, password=password)
            self.stdout.write(f"Created demo user {username!r} (password {password!r}).")
        admin_name, admin_password = DEMO_ADMIN
        if not User.objects.filter(username=admin_name).exists():
            User.objects.create_superuser(
                username=admin_name,
                email="admin@perfkit-demo.invalid",
                password=admin_password,
                first_name="DEMO ONLY",
                last_name="(well-known password)",
            )
            self.stdout.write(
                self.style.WARNING(
                    f"Created superuser {admin_name!r} / {admin_password!r}: DEMO ONLY, "
                    "never run this seed against a real database."
                )
            )
        return demo

    def _ensure_named(self, model: type[Category] | type[Tag], names: Sequence[str]) -> list[Any]:
        """Rows for ``names`` (keyed by slug), creating only the missing ones."""
        wanted = {slugify(name): name for name in names}
        existing = {obj.slug: obj for obj in model.objects.filter(slug__in=wanted)}
        missing = [
            baker.prepare(model, name=name, slug=slug)
            for slug, name in wanted.items()
            if slug not in existing
        ]
        model.objects.bulk_create(missing)
        return list(model.objects.filter(slug__in=wanted).order_by("pk"))

    def _ensure_authors(self, rng: random.Random, demo_user: AbstractBaseUser) -> list[Author]:
        authors = list(Author.objects.order_by("pk"))
        missing = N_AUTHORS - len(authors)
        if missing > 0:
            names = [f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}" for _ in range(missing)]
            bios = [
                f"{name.split()[0]} covers {rng.choice(CATEGORIES).lower()} "
                f"and {rng.choice(TAGS).lower()}. {_sentence(rng, 8, 14)}"
                for name in names
            ]
            new = baker.prepare(
                Author, _quantity=missing, name=iter(names), bio=iter(bios), user=None
            )
            if not Author.objects.filter(user=demo_user).exists():
                new[0].user = demo_user  # the demo login is also a byline
            Author.objects.bulk_create(new, batch_size=BATCH_SIZE)
            authors = list(Author.objects.order_by("pk"))
        return authors

    # --- articles, tags, comments --------------------------------------------------------

    def _create_articles(
        self,
        rng: random.Random,
        now: datetime,
        count: int,
        categories: Sequence[Category],
        authors: Sequence[Author],
    ) -> list[Article]:
        if count == 0:
            return []
        taken = set(Article.objects.values_list("slug", flat=True))
        serial = len(taken)
        titles: list[str] = []
        slugs: list[str] = []
        for _ in range(count):
            title = (
                f"{rng.choice(ADJECTIVES)} {rng.choice(SUBJECTS)} {rng.choice(VERBS)} "
                f"{rng.choice(OBJECTS)}"
            )
            base = slugify(title)[:200]
            serial += 1
            slug = f"{base}-{serial}"
            while slug in taken:
                serial += 1
                slug = f"{base}-{serial}"
            taken.add(slug)
            titles.append(title)
            slugs.append(slug)
        spread_seconds = int(SPREAD.total_seconds())
        articles = baker.prepare(
            Article,
            _quantity=count,
            title=iter(titles),
            slug=iter(slugs),
            body=iter(
                [
                    "\n\n".join(_paragraph(rng) for _ in range(rng.randint(2, 5)))
                    for _ in range(count)
                ]
            ),
            category=iter(rng.choices(categories, k=count)),
            author=iter(rng.choices(authors, k=count)),
            published_at=iter(
                [now - timedelta(seconds=rng.randrange(spread_seconds)) for _ in range(count)]
            ),
            is_published=iter([rng.random() < PUBLISHED_SHARE for _ in range(count)]),
        )
        created = Article.objects.bulk_create(articles, batch_size=BATCH_SIZE)
        ArticleStats.objects.bulk_create(
            (
                ArticleStats(article_id=a.pk, views=int(rng.paretovariate(1.2) * 40))
                for a in created
            ),
            batch_size=BATCH_SIZE,
        )
        return created

    def _tag_articles(
        self, rng: random.Random, articles: Sequence[Article], tags: Sequence[Tag]
    ) -> int:
        through = Article.tags.through
        links = [
            through(article_id=article.pk, tag_id=tag.pk)
            for article in articles
            for tag in rng.sample(
                list(tags), k=min(len(tags), rng.randint(0, MAX_TAGS_PER_ARTICLE))
            )
        ]
        through.objects.bulk_create(links, batch_size=BATCH_SIZE)
        return len(links)

    def _create_comments(
        self, rng: random.Random, now: datetime, count: int, articles: Sequence[Article]
    ) -> int:
        if count == 0:
            return 0
        targets: Sequence[Article] = articles or list(Article.objects.only("pk", "published_at"))
        if not targets:
            self.stdout.write(self.style.WARNING("No articles to comment on; no comments created."))
            return 0
        # Heavy-tailed popularity: a few articles collect most of the comments.
        weights = [rng.paretovariate(1.1) for _ in targets]
        chosen = rng.choices(targets, weights=weights, k=count)
        created_at = [
            min(now, article.published_at + timedelta(seconds=rng.randrange(30 * 86400)))
            for article in chosen
        ]
        comments = baker.prepare(
            Comment,
            _quantity=count,
            article=iter(chosen),
            author_name=iter(
                [f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)[0]}." for _ in range(count)]
            ),
            body=iter(
                [f"{rng.choice(COMMENT_OPENERS)} {_sentence(rng, 5, 25)}" for _ in range(count)]
            ),
            is_approved=iter([rng.random() < APPROVED_SHARE for _ in range(count)]),
        )
        for comment, when in zip(comments, created_at, strict=True):
            comment.created_at = when
        # created_at is auto_now_add, which would stamp every row "now" on insert; keep the
        # spread-out timestamps set above (bulk_update instead would cost ~20x the time).
        with _auto_now_add_suspended(Comment, "created_at"):
            Comment.objects.bulk_create(comments, batch_size=BATCH_SIZE)
        # The same rows in the table without the index, for /comments/naive/.
        UnindexedComment.objects.bulk_create(
            (
                UnindexedComment(
                    article_id=c.article_id,
                    author_name=c.author_name,
                    body=c.body,
                    created_at=c.created_at,
                    is_approved=c.is_approved,
                )
                for c in comments
            ),
            batch_size=BATCH_SIZE,
        )
        return len(comments)
