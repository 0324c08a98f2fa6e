"""One rate limiter under one scenario, in whatever virtualenv runs this file.

Run by ``bench/ratelimit.py``, never imported by it: each competitor runs in its
own virtualenv (django-ratelimit, DRF) or in the project's (perfkit, the raw
INCR floor), so this file imports a library only inside the branch that needs
it. Prints one JSON object.

    python bench/ratelimit_worker.py IMPL SCENARIO REDIS_URL

IMPL: perfkit-sliding, perfkit-gcra, perfkit-fixed, django-ratelimit, drf, raw-evalsha,
raw-incr
SCENARIO: latency, edge, late, concurrency, outage (latency takes several IMPLs, comma-separated,
from one virtualenv)
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: perfkit checks decided by the fail policy (Redis timed out), not by Redis.
FAIL_POLICY_DECISIONS: list[bool] = []


def setup_django(impl: str, redis_url: str) -> None:
    import django
    from django.conf import settings

    apps = ["django.contrib.auth", "django.contrib.contenttypes"]
    perfkit: dict[str, Any] = {}
    if impl.startswith("perfkit"):
        sys.path.insert(0, str(ROOT))
        apps.append("django_perfkit")
        perfkit = {"REDIS_URL": redis_url, "KEY_PREFIX": "bench", "REDIS_CACHE_ALIAS": None}
    settings.configure(
        INSTALLED_APPS=apps + (["rest_framework"] if impl == "drf" else []),
        DATABASES={},
        CACHES={
            "default": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": redis_url,
                # The libraries' defaults: no timeout of their own.
            }
        },
        PERFKIT=perfkit,
        USE_TZ=True,
        SECRET_KEY="bench",
    )
    django.setup()


def make_check(impl: str, rate: str, group: str) -> Callable[[Any], bool]:
    """A function request -> allowed?"""
    if impl.startswith("perfkit"):
        from django_perfkit.ratelimit import get_usage

        algorithm = impl.split("-", 1)[1]

        def perfkit_check(request: Any) -> bool:
            usage = get_usage(request, group=group, key="ip", rate=rate,
                              increment=True, algorithm=algorithm)  # fmt: skip
            if usage is not None and usage["failed"]:
                # Redis did not answer within the timeout; the fail policy decided.
                FAIL_POLICY_DECISIONS.append(usage["should_limit"])
            return not (usage is not None and usage["should_limit"])

        return perfkit_check
    if impl == "django-ratelimit":
        from django_ratelimit.core import is_ratelimited as dr_is_ratelimited

        def dr_check(request: Any) -> bool:
            return not dr_is_ratelimited(request, group=group, key="ip", rate=rate,
                                         increment=True)  # fmt: skip

        return dr_check
    if impl == "drf":
        from rest_framework.throttling import SimpleRateThrottle

        class Throttle(SimpleRateThrottle):
            scope = group
            THROTTLE_RATES = {group: rate}

            def get_cache_key(self, request: Any, view: Any) -> str:
                return f"throttle_{group}_{request.META['REMOTE_ADDR']}"

        def drf_check(request: Any) -> bool:
            return bool(Throttle().allow_request(request, None))

        return drf_check
    if impl == "raw-evalsha":
        import redis

        from django_perfkit.ratelimit.scripts import SLIDING

        client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
        sha = client.script_load(SLIDING.source)
        # perfkit-sliding's arguments for this rate (1000000/h), sent as is.
        packed = f"{rate.split('/')[0]} 3600 1 1"

        def evalsha_check(request: Any) -> bool:
            return client.evalsha(sha, 1, f"raw:{{{group}}}", packed).startswith(b"1")

        return evalsha_check
    if impl == "raw-incr":
        import redis

        client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])

        def raw_check(request: Any) -> bool:
            return int(client.incr(f"raw:{group}")) <= 10**12

        return raw_check
    raise SystemExit(f"unknown impl {impl}")


def request_for(ip: str = "10.0.0.1") -> Any:
    from django.test import RequestFactory

    request = RequestFactory().get("/", REMOTE_ADDR=ip)
    return request


def latency(impls: list[str]) -> dict[str, Any]:
    """p50 and p99 µs per check. Several limiters given (comma-separated): call by
    call in turn, in this one process, so each sample of one is taken at the
    same moment as a sample of the others (the machine's noise moves them all)."""
    checks = [make_check(impl, "1000000/h", f"lat-{uuid.uuid4().hex[:8]}") for impl in impls]
    request = request_for()
    for _ in range(200):
        for check in checks:
            check(request)
    samples: list[list[float]] = [[] for _ in impls]
    n = len(checks)
    for i in range(1500):
        for j in range(n):
            k = (i + j) % n  # a rotating order: none is always first after another
            start = time.perf_counter_ns()
            checks[k](request)
            samples[k].append((time.perf_counter_ns() - start) / 1000)
    result = {}
    for impl, mine in zip(impls, samples, strict=True):
        mine.sort()
        result[impl] = {
            "p50_us": statistics.median(mine),
            "p99_us": mine[int(len(mine) * 0.99)],
            "checks": 1700,
        }
    return result


def _align(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    _, micros = client.time()
    client.close()
    time.sleep(1 - micros / 1e6 + 0.02)


def edge(impl: str, redis_url: str) -> dict[str, Any]:
    """Limit 10/s: 1 request at a window start, 9 at +0.90 s, 10 at +1.03 s."""
    check = make_check(impl, "10/s", f"edge-{uuid.uuid4().hex[:8]}")
    request = request_for()
    _align(redis_url)
    start = time.monotonic()
    allowed = int(check(request))
    time.sleep(max(0, 0.90 - (time.monotonic() - start)))
    allowed += sum(check(request) for _ in range(9))
    time.sleep(max(0, 1.03 - (time.monotonic() - start)))
    allowed += sum(check(request) for _ in range(10))
    return {"allowed": allowed, "sent": 20}


def late(impl: str, redis_url: str) -> dict[str, Any]:
    """Limit 10/s: 10 requests 0.95 s into a window, 10 more 0.95 s later (all
    within one second: at most 10 should pass)."""
    check = make_check(impl, "10/s", f"late-{uuid.uuid4().hex[:8]}")
    request = request_for()
    _align(redis_url)  # 0.02 s into a window
    time.sleep(0.93)
    start = time.monotonic()
    allowed = sum(check(request) for _ in range(10))
    time.sleep(max(0, 0.95 - (time.monotonic() - start)))
    allowed += sum(check(request) for _ in range(10))
    return {"allowed": allowed, "sent": 20}


def concurrency(impl: str, group: str) -> dict[str, Any]:
    """4 threads x 50 attempts in this process, against 100 per day (4 such processes run)."""
    check = make_check(impl, "100/d", group)
    allowed = 0
    lock = threading.Lock()

    def worker() -> None:
        nonlocal allowed
        request = request_for()
        for _ in range(50):
            if check(request):
                with lock:
                    allowed += 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"allowed": allowed, "sent": 200, "fail_policy": len(FAIL_POLICY_DECISIONS)}


def outage(impl: str) -> dict[str, Any]:
    """Redis unreachable (the URL given points at a stopped or black-holed server)."""
    check = make_check(impl, "5/m", f"out-{uuid.uuid4().hex[:8]}")
    request = request_for()
    outcomes: dict[str, int] = {"allowed": 0, "limited": 0, "exception": 0}
    worst = 0.0
    for _ in range(20):
        start = time.perf_counter()
        try:
            outcomes["allowed" if check(request) else "limited"] += 1
        except Exception:
            outcomes["exception"] += 1
        worst = max(worst, time.perf_counter() - start)
    return {**outcomes, "worst_ms": worst * 1000}


def count(impl: str) -> dict[str, Any]:
    check = make_check(impl, "1000000/h", f"cnt-{uuid.uuid4().hex[:8]}")
    request = request_for()
    for _ in range(100):
        check(request)
    return {"checks": 100}


def main() -> None:
    impl, scenario, redis_url = sys.argv[1:4]
    os.environ["BENCH_REDIS_URL"] = redis_url
    impls = impl.split(",")
    # One Django for all of them: perfkit's settings when any of them is perfkit.
    setup_django(next((i for i in impls if i.startswith("perfkit")), impls[0]), redis_url)
    if scenario == "latency":
        result = latency(impls)
    elif scenario == "count":
        result = count(impl)
    elif scenario == "late":
        result = late(impl, redis_url)
    elif scenario == "edge":
        result = edge(impl, redis_url)
    elif scenario == "concurrency":
        result = concurrency(impl, sys.argv[4])
    elif scenario == "outage":
        result = outage(impl)
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
