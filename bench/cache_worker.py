"""One ORM cache under one scenario, in whatever virtualenv runs this file.

Run by ``bench/cache.py``, never imported by it: cacheops and cachalot patch
Django, so each competitor runs in a process (and virtualenv) of its own. Prints
one JSON object.

    python bench/cache_worker.py IMPL SCENARIO PG_PORT REDIS_URL [ROLE]

IMPL: none, perfkit, perfkit-key (explicit keys), perfkit-last (.cache() called last, on the
built queryset), cacheops, cachalot, raw-direct (the floor's GET on a kept connection),
raw (the floor:
Redis GET + unpickle of the same payload), build (Django building the querysets, not run)
SCENARIO: seed, latency, latency-together (IMPLS comma-separated in ROLE; perfkit's
settings and IMPL's database), saves (latency's saves alone), save-floor (perfkit's:
what one round trip costs a save), hitratio, race, stampede, memory
"""

from __future__ import annotations

import json
import os
import pickle
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ITEMS = 2000
CATEGORIES = 20
N = 1000
WARMUP = 200


def setup(impl: str, pg_port: str, redis_url: str) -> None:
    os.environ["BENCH_IMPL"] = impl
    sys.path.insert(0, str(ROOT / "bench"))
    import django
    from django.conf import settings

    apps = ["django.contrib.contenttypes", "cacheapp"]
    extra: dict[str, Any] = {}
    caches: dict[str, Any] = {"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}}
    if impl.startswith("perfkit") or impl == "raw":
        sys.path.insert(0, str(ROOT))
        apps.insert(0, "django_perfkit")
        extra["PERFKIT"] = {
            "REDIS_URL": redis_url,
            "REDIS_CACHE_ALIAS": None,
            "KEY_PREFIX": "bench",
            "COLLECT_QUERIES": False,
        }
    elif impl == "cacheops":
        apps.append("cacheops")
        extra["CACHEOPS_REDIS"] = redis_url
        # lock: cacheops' own dog-pile protection, on for a fair stampede table.
        extra["CACHEOPS"] = {"cacheapp.*": {"ops": "all", "timeout": 3600, "lock": True}}
        extra["CACHEOPS_DEGRADE_ON_FAILURE"] = True
    elif impl == "cachalot":
        apps.append("cachalot")
        caches = {"default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": redis_url}}
    settings.configure(
        INSTALLED_APPS=apps,
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "HOST": "127.0.0.1",
                "PORT": pg_port,
                "USER": "postgres",
                "NAME": f"bench_{impl.replace('-', '_')}",
            }
        },
        CACHES=caches,
        USE_TZ=True,
        SECRET_KEY="bench",
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        **extra,
    )
    django.setup()


def cached(qs: Any, impl: str, key: str | None = None) -> Any:
    if impl == "perfkit-key" and key is not None:
        return qs.cache(key=key)
    if impl in ("perfkit", "perfkit-key", "cacheops"):
        return qs.cache()
    return qs


# -- counting database statements ------------------------------------------------------

_counts = {"select": 0, "item_select": 0, "all": 0}
_count_lock = threading.Lock()


def _counter(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
    with _count_lock:
        _counts["all"] += 1
        if sql.lstrip().upper().startswith("SELECT"):
            _counts["select"] += 1
            if '"cacheapp_item"' in sql:
                _counts["item_select"] += 1
    return execute(sql, params, many, context)


def install_counter() -> None:
    from django.db import connections
    from django.db.backends.signals import connection_created

    def install(connection: Any, **kwargs: Any) -> None:
        if _counter not in connection.execute_wrappers:
            connection.execute_wrappers.append(_counter)

    connection_created.connect(install, weak=False)
    for conn in connections.all(initialized_only=True):
        install(conn)


# -- scenarios --------------------------------------------------------------------------


def seed() -> dict[str, Any]:
    from cacheapp.models import Author, Category, Item
    from django.core.management import call_command

    call_command("migrate", run_syncdb=True, verbosity=0)
    if Item.objects.exists():
        return {"items": Item.objects.count()}
    rng = random.Random(1)
    cats = Category.objects.bulk_create([Category(name=f"c{i}") for i in range(CATEGORIES)])
    authors = Author.objects.bulk_create([Author(name=f"a{i}") for i in range(50)])
    Item.objects.bulk_create(
        Item(
            category=cats[i % CATEGORIES],
            author=rng.choice(authors),
            title=f"item {i}",
            body="x" * 120,
        )
        for i in range(ITEMS)
    )
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return {"items": ITEMS}


def _median_us(fn: Callable[[int], Any], n: int = N) -> float:
    for i in range(WARMUP):
        fn(i)
    samples = []
    for i in range(n):
        start = time.perf_counter_ns()
        fn(i)
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000


def _reads(impl: str, pks: list[int], cats: list[int]) -> dict[str, Callable[[int], Any]]:
    """The three hits of ``impl`` (``raw``: the floor), each a function of a counter."""
    from cacheapp.models import Item

    if impl == "raw":
        return _floor_reads(pks, cats)
    if impl == "raw-direct":
        return _floor_reads(pks, cats, direct=True)
    if impl == "build":
        return _builds(pks, cats)

    # perfkit's forms: .cache() first, on the manager, so that a hit builds
    # nothing after it (the steps are named, not built); with key=, a name per
    # kind of read (the steps' arguments are added to it). "perfkit-last"
    # builds the whole queryset and calls .cache() last, as cacheops is used.
    last = impl in ("perfkit-last", "cacheops")

    def head(name: str) -> Any:
        if impl == "perfkit":
            return Item.objects.cache()
        if impl == "perfkit-key":
            return Item.objects.cache(key=name)
        return Item.objects

    def get(i: int) -> Any:
        pk = pks[i % len(pks)]
        if impl == "perfkit-last":
            return Item.objects.filter(pk=pk).cache().get()
        if impl == "cacheops":
            return Item.objects.cache().get(pk=pk)
        return head("get").get(pk=pk)

    def listing(i: int) -> Any:
        c = cats[i % len(cats)]
        if last:
            return list(Item.objects.filter(category_id=c).select_related("author")[:20].cache())
        return list(head("list").filter(category_id=c).select_related("author")[:20])

    def count(i: int) -> Any:
        c = cats[i % len(cats)]
        if last:
            return Item.objects.filter(category_id=c).cache().count()
        return head("count").filter(category_id=c).count()

    return {"get_us": get, "list_us": listing, "count_us": count}


def _builds(pks: list[int], cats: list[int]) -> dict[str, Callable[[int], Any]]:
    """What any cache pays before it can look: Django building the queryset (and
    get() its filtered clone) without running it."""
    from cacheapp.models import Item

    def build_get(i: int) -> Any:
        qs = Item.objects.filter(pk=pks[i % len(pks)]).order_by()
        qs.query.set_limits(high=21)
        return qs

    def build_list(i: int) -> Any:
        return Item.objects.filter(category_id=cats[i % len(cats)]).select_related("author")[:20]

    def build_count(i: int) -> Any:
        return Item.objects.filter(category_id=cats[i % len(cats)])

    return {"get_us": build_get, "list_us": build_list, "count_us": build_count}


def _keys() -> tuple[list[int], list[int]]:
    from cacheapp.models import Category, Item

    pks = list(Item.objects.order_by("id").values_list("id", flat=True)[:20])
    cats = list(Category.objects.order_by("id").values_list("id", flat=True)[:10])
    return pks, cats


def latency(impl: str) -> dict[str, Any]:

    pks, cats = _keys()
    results: dict[str, Any] = {}
    reads = _reads(impl, pks, cats)
    for name, read in reads.items():
        results[name] = _median_us(read)
    if impl == "raw":
        results.update(_floor_sizes())
        return results
    results.update(_saves(cats))
    return results


def latency_together(impls: list[str]) -> dict[str, Any]:
    """Hit latency of several implementations call by call in turn, in this process.

    A loopback round trip drifts by tens of µs from one minute to the next on
    a shared machine; taking turns per call puts every implementation's
    samples at the same moments, so their ratios are not moved by the drift.
    """
    pks, cats = _keys()
    reads = {impl: _reads(impl, pks, cats) for impl in impls}
    results: dict[str, dict[str, Any]] = {impl: {} for impl in impls}
    for name in ("get_us", "list_us", "count_us"):
        calls = [reads[impl][name] for impl in impls]
        samples: list[list[int]] = [[] for _ in impls]
        for i in range(WARMUP):
            for call in calls:
                call(i)
        n = len(calls)
        for i in range(N):
            for j in range(n):
                k = (i + j) % n  # a rotating order: none is always first after another
                start = time.perf_counter_ns()
                calls[k](i)
                samples[k].append(time.perf_counter_ns() - start)
        for impl, mine in zip(impls, samples, strict=True):
            results[impl][name] = statistics.median(mine) / 1000
    for impl in impls:
        if impl == "raw":
            results[impl].update(_floor_sizes())
        elif impl not in (
            "build",
            "perfkit-last",
            "raw-direct",
        ):  # perfkit-last's saves are perfkit's
            results[impl].update(_saves(cats))
    return results


def _saves(cats: list[int]) -> dict[str, Any]:
    """save() of rows of categories that the reads did not touch: µs, SELECTs, round trips."""
    from cacheapp.models import Item

    victims = list(Item.objects.filter(category_id__in=cats[-3:]).order_by("id")[:50])
    rng = random.Random(2)
    install_counter()
    before = dict(_counts)
    redis_before = _redis_commands()

    def save(i: int) -> None:
        item = victims[i % len(victims)]
        item.n = rng.randint(0, 10**6)
        item.save()

    results: dict[str, Any] = {"save_us": _median_us(save, n=500)}
    saves = WARMUP + 500
    results["save_selects"] = (_counts["select"] - before["select"]) / saves
    results["save_redis_calls"] = (_redis_commands() - redis_before) / saves
    if os.environ.get("BENCH_IMPL", "").startswith("perfkit"):
        results.update(_saves_with_and_without_the_hook(save))
    return results


def _saves_with_and_without_the_hook(save: Callable[[int], None]) -> dict[str, float]:
    """The same saves, in this process, with perfkit's write hook (the execute
    wrapper that bumps the tokens) and without it, call by call in turn: what
    perfkit adds to a save, with the drift of this machine falling on both."""
    from django.db import connection

    from django_perfkit.versions.writes import watcher

    wrappers = connection.execute_wrappers
    samples: dict[bool, list[int]] = {True: [], False: []}
    for i in range(WARMUP + 500):
        for hooked in (True, False) if i % 2 else (False, True):
            if not hooked:
                wrappers.remove(watcher)
            try:
                start = time.perf_counter_ns()
                save(i)
                took = time.perf_counter_ns() - start
            finally:
                if not hooked:
                    wrappers.append(watcher)
            if i >= WARMUP:
                samples[hooked].append(took)
    return {
        "save_hooked_us": statistics.median(samples[True]) / 1000,
        "save_unhooked_us": statistics.median(samples[False]) / 1000,
    }


def save_floor(cats: list[int]) -> dict[str, float]:
    """What one Redis round trip after the write costs a save, next to what perfkit's hook costs.

    The same saves as :func:`_saves`, call by call in turn: without perfkit's
    write hook; with a ``PING``, then with perfkit's bump script (``EVALSHA``
    of the same keys), sent on a bare socket right after the statement; and
    with perfkit's hook. The bare socket's rows are the floor of any design
    that bumps in one round trip after the write: they leave out everything
    in Python but a ``sendall`` and a ``recv``.
    """
    import socket
    from urllib.parse import urlparse

    import hiredis
    from cacheapp.models import Item
    from django.db import connection

    from django_perfkit.versions.tokens import BUMP, _ttl_ms, init_seed, tokens_for
    from django_perfkit.versions.writes import watcher, write_keys

    victims = list(Item.objects.filter(category_id__in=cats[-3:]).order_by("id")[:50])
    url = urlparse(REDIS_URL)
    bare = socket.create_connection((url.hostname, url.port or 6379))
    bare.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    bare.sendall(hiredis.pack_command(("SELECT", url.path.strip("/") or "0")))
    bare.recv(64)
    # The keys perfkit's hook bumps for each victim's save, read off the
    # statement once (outside the timing), and the bump packed for each.
    statements: list[tuple[str, Any]] = []

    def keep(execute: Callable[..., Any], sql: str, params: Any, many: bool, ctx: Any) -> Any:
        statements.append((sql, params))
        return execute(sql, params, many, ctx)

    wrappers = connection.execute_wrappers
    wrappers.remove(watcher)
    with connection.execute_wrapper(keep):
        for item in victims:
            item.save()
    if len(statements) != len(victims):
        raise RuntimeError(f"expected one UPDATE per save, got {statements}")
    tokens = tokens_for(connection.alias)
    ttl = _ttl_ms()
    bumps = [
        hiredis.pack_command(("EVALSHA", BUMP.sha, len(keys), *keys, init_seed(), ttl))
        for keys in (write_keys(tokens, sql, params, False) or [] for sql, params in statements)
    ]
    ping = hiredis.pack_command(("PING",))

    victim = [0]  # the index of the row being saved

    def after(payload: Callable[[int], bytes]) -> Callable[..., Any]:
        def send(execute: Callable[..., Any], sql: str, params: Any, many: bool, ctx: Any) -> Any:
            result = execute(sql, params, many, ctx)
            bare.sendall(payload(victim[0]))
            bare.recv(64)
            return result

        return send

    variants: dict[str, Callable[..., Any] | None] = {
        "unhooked": None,
        "ping": after(lambda i: ping),
        "bump_script": after(bumps.__getitem__),
        "perfkit": watcher,
    }
    samples: dict[str, list[int]] = {name: [] for name in variants}
    rng = random.Random(3)
    try:
        for i in range(WARMUP + 2000):
            names = list(variants) if i % 2 else list(reversed(variants))
            for name in names:
                victim[0] = i % len(victims)
                item = victims[victim[0]]
                item.n = rng.randint(0, 10**6)
                wrapper = variants[name]
                if wrapper is not None:
                    wrappers.append(wrapper)
                try:
                    start = time.perf_counter_ns()
                    item.save()
                    took = time.perf_counter_ns() - start
                finally:
                    if wrapper is not None:
                        wrappers.remove(wrapper)
                if i >= WARMUP:
                    samples[name].append(took)
    finally:
        wrappers.append(watcher)
        bare.close()
    return {f"{name}_us": statistics.median(v) / 1000 for name, v in samples.items()}


_round_trips = [0]


def count_round_trips() -> None:
    """Count what each library sends to Redis: one packed send is one round trip."""
    from redis.connection import AbstractConnection

    original = AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        _round_trips[0] += 1
        original(self, command, check_health)

    AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]


def _redis_commands() -> int:
    return _round_trips[0]


_floor_payloads: dict[str, list[bytes]] = {}


def _floor_reads(
    pks: list[int], cats: list[int], direct: bool = False
) -> dict[str, Callable[[int], Any]]:
    """Redis GET + unpickle of the same payloads perfkit stores (the floor).

    ``direct``: the GET sent as perfkit sends its commands, on a connection
    the thread keeps, without redis-py's per-call machinery, polling for its
    reply for as long as perfkit's own client does (``REDIS_SPIN``).
    """
    import redis
    from cacheapp.models import Item

    from django_perfkit.conf import get_settings
    from django_perfkit.redis.scripts import ReplySpin, command

    client = redis.Redis.from_url(REDIS_URL)
    if direct:
        client.perfkit_spin = ReplySpin(get_settings().redis_spin)  # type: ignore[attr-defined]
    _floor_payloads.update(
        get_us=[pickle.dumps([Item.objects.get(pk=pk)], protocol=5) for pk in pks],
        list_us=[
            pickle.dumps(
                list(Item.objects.filter(category_id=c).select_related("author")[:20]), protocol=5
            )
            for c in cats
        ],
        count_us=[pickle.dumps(Item.objects.filter(category_id=c).count()) for c in cats],
    )
    reads: dict[str, Callable[[int], Any]] = {}
    for name, values in _floor_payloads.items():
        for i, value in enumerate(values):
            client.set(f"bench:floor:{name}:{i}", value)

        def read(i: int, name: str = name, size: int = len(values)) -> Any:
            return pickle.loads(client.get(f"bench:floor:{name}:{i % size}"))

        def read_direct(i: int, name: str = name, size: int = len(values)) -> Any:
            return pickle.loads(command(client, "GET", f"bench:floor:{name}:{i % size}"))

        if direct:
            read = read_direct

        reads[name] = read
    return reads


def _floor_sizes() -> dict[str, Any]:
    return {
        name.replace("_us", "_bytes"): statistics.median(len(v) for v in values)
        for name, values in _floor_payloads.items()
    }


def hitratio(impl: str) -> dict[str, Any]:
    from cacheapp.models import Category, Item

    cats = list(Category.objects.order_by("id").values_list("id", flat=True))
    read_cats, write_cats = cats[:10], cats[10:]
    writable = list(Item.objects.filter(category_id__in=write_cats))
    rng = random.Random(3)
    install_counter()
    reads = db_reads = 0
    ops = 5000
    started = time.perf_counter()
    for _ in range(ops):
        if rng.random() < 0.95:
            c = rng.choice(read_cats)
            before = _counts["item_select"]
            qs = Item.objects.filter(category_id=c).select_related("author")[:20]
            list(cached(qs, impl, f"list:{c}"))
            reads += 1
            db_reads += _counts["item_select"] > before
        else:
            item = rng.choice(writable)
            item.n += 1
            item.save()
    elapsed = time.perf_counter() - started
    return {
        "reads": reads,
        "db_reads": db_reads,
        "hit_ratio": 1 - db_reads / reads,
        "ops_per_s": ops / elapsed,
    }


def race(impl: str, role: str) -> dict[str, Any]:
    """Stale reads: ``writer`` saves one row, ``reader`` reads it (as in tests/)."""
    import redis
    from cacheapp.models import Item

    control = redis.Redis.from_url(REDIS_URL)
    committed, done = f"bench-race:{impl}:committed", f"bench-race:{impl}:done"
    pk = Item.objects.order_by("id").values_list("id", flat=True)[0]
    if role == "writer":
        control.delete(committed, done)
        item = Item.objects.get(pk=pk)
        rng = random.Random(4)
        for i in range(1, 301):
            item.title = f"v{i}"
            item.save()
            control.set(committed, i)
            time.sleep(rng.expovariate(1 / 0.002))
        control.set(done, 1)
        return {"saves": 300}
    while not control.exists(committed):
        time.sleep(0.001)
    reads = stale = 0
    while not control.exists(done):
        before = int(control.get(committed) or 0)
        seen = cached(Item.objects, impl, f"race:{pk}").get(pk=pk)
        reads += 1
        version = int(seen.title[1:]) if seen.title.startswith("v") else 0
        stale += version < before
    time.sleep(0.3)
    final = cached(Item.objects, impl, f"race:{pk}").get(pk=pk)
    return {"reads": reads, "stale": stale, "final_current": final.title == "v300"}


def stampede(impl: str) -> dict[str, Any]:
    from cacheapp.models import Item
    from django.db import connections
    from django.db.models import CharField, Func, Value

    install_counter()
    threads = 100
    rounds = []
    for round_no in range(3):
        barrier = threading.Barrier(threads)
        errors: list[str] = []
        category = 1 + round_no

        def request(
            category: int = category,
            barrier: threading.Barrier = barrier,
            errors: list[str] = errors,
        ) -> None:
            try:
                barrier.wait()
                # An expensive query: 50 ms in PostgreSQL (pg_sleep, run for
                # its one row) before it answers.
                qs = Item.objects.filter(category_id=category).annotate(
                    slow=Func(Value(0.05), function="pg_sleep", output_field=CharField())
                )[:1]
                list(cached(qs, impl, f"stampede:{category}"))
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            finally:
                connections.close_all()

        before = _counts["item_select"]
        workers = [threading.Thread(target=request) for _ in range(threads)]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        rounds.append(
            {
                "db_executions": _counts["item_select"] - before,
                "seconds": time.perf_counter() - started,
                "errors": len(errors),
                "first_error": errors[0] if errors else None,
            }
        )
    return {"rounds": rounds}


def memory(impl: str) -> dict[str, Any]:
    import redis
    from cacheapp.models import Item

    client = redis.Redis.from_url(REDIS_URL)
    keys_before = client.dbsize()
    used_before = int(client.info("memory")["used_memory"])
    pks = list(Item.objects.order_by("id").values_list("id", flat=True)[:1000])
    for pk in pks:
        cached(Item.objects.filter(pk=pk), impl, f"mem:{pk}").first()
    for i, pk in enumerate(pks):
        qs = Item.objects.filter(category_id=1 + i % CATEGORIES, n=-pk)
        list(cached(qs, impl, f"mem2:{pk}"))
    queries = 2 * len(pks)
    result = {
        "queries": queries,
        "keys": (client.dbsize() - keys_before) / queries,
        "bytes": (int(client.info("memory")["used_memory"]) - used_before) / queries,
    }
    client.close()
    return result


REDIS_URL = ""


def main() -> None:
    global REDIS_URL
    impl, scenario, pg_port, REDIS_URL = sys.argv[1:5]
    role = sys.argv[5] if len(sys.argv) > 5 else ""
    setup(impl, pg_port, REDIS_URL)
    count_round_trips()
    if scenario == "seed":
        result = seed()
    elif scenario == "latency":
        result = latency(impl)
    elif scenario == "latency-together":
        result = latency_together(sys.argv[5].split(","))
    elif scenario == "saves":
        result = _saves(_keys()[1])
    elif scenario == "save-floor":
        result = save_floor(_keys()[1])
    elif scenario == "hitratio":
        result = hitratio(impl)
    elif scenario == "race":
        result = race(impl, role)
    elif scenario == "stampede":
        result = stampede(impl)
    elif scenario == "memory":
        result = memory(impl)
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
