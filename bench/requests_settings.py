"""Settings for ``bench/requests.py``: the demo site, one configuration per ``BENCH_CONFIG``.

* ``bare``: the demo without ``PerfkitMiddleware``. The ``django_perfkit``
  app stays installed: the article list is built with its ``.cache()`` and
  ``@cached_on_write``, so its cost (and the idle query collector's
  execute wrapper, which records nothing without the middleware) is in the
  baseline too.
* ``perfkit``: the demo as configured (``PerfkitMiddleware`` first), with
  the production defaults: ``DEBUG`` off, so the query guard runs in its
  default ``log`` mode, the slow-request log on, ``Server-Timing`` for all.
* ``perfkit-guard-off``: ``perfkit`` with ``QUERY_GUARD["MODE"] = "off"``.
* ``ddtrace``: ``bare``; the tracer comes from ``ddtrace-run`` (environment).
* ``silk``: ``bare`` plus django-silk's app and middleware (first), defaults.
* ``debug-toolbar``: ``bare`` plus django-debug-toolbar's app and middleware
  (first), with what it needs to show itself: ``DEBUG = True`` and
  ``INTERNAL_IPS = ["127.0.0.1"]``.

Database and Redis come from ``DATABASE_URL`` and ``REDIS_URL`` (the demo's
variables); the demo's rate limits are lifted.
"""

from __future__ import annotations

import os

from testproject.settings import *  # noqa: F403
from testproject.settings import INSTALLED_APPS, MIDDLEWARE, PERFKIT

CONFIGS = ("bare", "perfkit", "perfkit-guard-off", "ddtrace", "silk", "debug-toolbar")
BENCH_CONFIG = os.environ.get("BENCH_CONFIG", "perfkit")
if BENCH_CONFIG not in CONFIGS:
    raise ValueError(f"BENCH_CONFIG={BENCH_CONFIG!r}: expected one of {', '.join(CONFIGS)}")

DEBUG = False
ROOT_URLCONF = "bench.requests_urls"
NEWS_RATELIMITS: dict[str, str | None] = {}
INSTALLED_APPS = list(INSTALLED_APPS)
MIDDLEWARE = list(MIDDLEWARE)
# None: the default for the mode, "log" with DEBUG off (the demo says "warn").
PERFKIT = {**PERFKIT, "QUERY_GUARD": {"MODE": None}}

if BENCH_CONFIG == "perfkit-guard-off":
    PERFKIT["QUERY_GUARD"] = {"MODE": "off"}
elif not BENCH_CONFIG.startswith("perfkit"):
    MIDDLEWARE.remove("django_perfkit.middleware.PerfkitMiddleware")

if BENCH_CONFIG == "silk":
    INSTALLED_APPS.append("silk")
    MIDDLEWARE.insert(0, "silk.middleware.SilkyMiddleware")
elif BENCH_CONFIG == "debug-toolbar":
    DEBUG = True
    INTERNAL_IPS = ["127.0.0.1"]
    INSTALLED_APPS.append("debug_toolbar")
    MIDDLEWARE.insert(0, "debug_toolbar.middleware.DebugToolbarMiddleware")
