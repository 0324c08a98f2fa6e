"""Settings for ``bench/stack.py``: the demo site, one configuration per ``BENCH_CONFIG``.

* ``bare``: the demo's code with perfkit switched off: no
  ``PerfkitMiddleware``, ``PERFKIT["ENABLED"] = False`` (``.cache()`` and
  cache on write compute every time, from the database) and
  ``RATELIMIT_ENABLE = False`` (no limit is checked). What the site costs as
  plain Django.
* ``perfkit``: everything on but caching: the middleware (query guard in its
  production ``log`` mode, Server-Timing, fleet stats, slow-request log), the
  demo's rate limits, and ``PERFKIT["CACHE"]["ENABLED"] = False``.
* ``perfkit-cache``: the demo as shipped: the same, with ``.cache()``, cache
  on write and, on the article list, a ``{% cached_as %}`` fragment of the
  rendered rows, serving the hot views from Redis.

The demo's limits on the JSON API and search are lifted to a rate the load
never reaches (every request is still checked); the login keeps its own (20
attempts a minute per IP, 5 per username), since the login route measures a
password-guessing burst.

Database and Redis come from ``DATABASE_URL`` and ``REDIS_URL``.
"""

from __future__ import annotations

import os

from testproject.settings import *  # noqa: F403
from testproject.settings import MIDDLEWARE, NEWS_RATELIMITS, PERFKIT

CONFIGS = ("bare", "perfkit", "perfkit-cache")
BENCH_CONFIG = os.environ.get("BENCH_CONFIG", "perfkit-cache")
if BENCH_CONFIG not in CONFIGS:
    raise ValueError(f"BENCH_CONFIG={BENCH_CONFIG!r}: expected one of {', '.join(CONFIGS)}")

DEBUG = False
NEWS_RATELIMITS = {**NEWS_RATELIMITS, "api": "1000000/m", "search": "1000000/m"}
MIDDLEWARE = list(MIDDLEWARE)
# None: the default for the mode, "log" with DEBUG off (the demo says "warn").
PERFKIT = {**PERFKIT, "QUERY_GUARD": {"MODE": None}}

if BENCH_CONFIG == "bare":
    MIDDLEWARE.remove("django_perfkit.middleware.PerfkitMiddleware")
    PERFKIT.update(ENABLED=False, RATELIMIT_ENABLE=False)
elif BENCH_CONFIG == "perfkit":
    PERFKIT["CACHE"] = {**PERFKIT.get("CACHE", {}), "ENABLED": False}
