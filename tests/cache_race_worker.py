"""A worker process for the stale-read test (and bench/cache.py's race table).

``writer``: saves one article ``--count`` times, its title ``v<i>``, with
random gaps of mean ``--gap`` seconds; after each ``save()`` returns it
publishes ``i`` in Redis (``<prefix>-race:committed``).

``reader``: until the writer says it is done, reads the article through
``.cache()`` (by primary key, and in its category's list) and through two
cached fragments (one over a cached list of every article, one over an
uncached queryset by primary key), and counts a read as stale when its version is older than the
one published before the read began. Prints one JSON line: reads, stale
reads, and whether a final read was current.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import django


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["reader", "writer"])
    parser.add_argument("--pk", type=int, required=True)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--gap", type=float, default=0.003)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    os.environ["PERFKIT_TEST_WORKER"] = "1"
    django.setup()

    import redis
    from django.conf import settings

    from django_perfkit.cache import cached_fragment
    from testproject.news.models import Article

    control = redis.Redis.from_url(settings.REDIS_URL)
    committed = f"{settings.KEY_PREFIX}-race:committed"
    done = f"{settings.KEY_PREFIX}-race:done"
    if args.role == "writer":
        article = Article.objects.get(pk=args.pk)
        rng = random.Random(args.pk)
        for i in range(1, args.count + 1):
            article.title = f"v{i}"
            article.save()
            control.set(committed, i)
            time.sleep(rng.expovariate(1 / args.gap))
        control.set(done, 1)
        return

    category_id = Article.objects.values_list("category_id", flat=True).get(pk=args.pk)
    reads = stale = 0
    while not control.exists(done):
        before = int(control.get(committed) or 0)
        article = Article.objects.cache().get(pk=args.pk)
        listed = [
            a for a in Article.objects.filter(category_id=category_id).cache() if a.pk == args.pk
        ]
        titles = [a.title for a in (article, *listed)]
        rows = Article.objects.order_by("pk").cache()  # every row: the table's scan token
        titles.append(
            cached_fragment(
                "race-list",
                [rows],
                lambda rows=rows: next(a.title for a in rows if a.pk == args.pk),
            )
        )
        one = Article.objects.filter(pk=args.pk)
        titles.append(cached_fragment("race-pk", [one], lambda one=one: one[0].title))
        for title in titles:
            reads += 1
            if int(title.lstrip("v") or 0) < before:
                stale += 1
    final_before = int(control.get(committed) or 0)
    final = Article.objects.cache().get(pk=args.pk)
    current = int(final.title.lstrip("v") or 0) == final_before
    sys.stdout.write(json.dumps({"reads": reads, "stale": stale, "final_current": current}) + "\n")


if __name__ == "__main__":
    main()
