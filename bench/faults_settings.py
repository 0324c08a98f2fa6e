"""Settings for ``bench/faults.py``: the demo site as shipped, with limits a fault can show.

The demo's own settings (``testproject.settings``: ``PerfkitMiddleware``
first, ``.cache()`` on the hot views, database sessions), with production
defaults (``DEBUG`` off: the query guard logs) and these changes:

* The demo's ``@ratelimit`` on the JSON API and on search stays, with its
  default failure policy (``"open"``), but at a rate the load never reaches:
  every request still asks Redis (one ``EVALSHA``) and is never refused.
* Two route rules (``PERFKIT["RATELIMITS"]``) for the probes, a budget of
  5 requests a minute per ``X-Fault-Client`` header: one on the login page
  (``GET``) with ``fail="open"``, one on the async JSON API with
  ``fail="closed"``. The load sends no such header and neither path.
* Logging to the console, that is to gunicorn's log, which the script reads,
  each line with its time: errors of ``django.request`` (a 500's traceback:
  with ``DEBUG`` off Django would only mail them to the admins), perfkit's
  messages, and at ``DEBUG`` each Redis call of perfkit's that failed (calls
  the circuit breaker skips are not logged).

Database and Redis come from ``DATABASE_URL`` and ``REDIS_URL`` (the demo's
variables).
"""

from __future__ import annotations

from typing import Any

from testproject.settings import *  # noqa: F403
from testproject.settings import LOGGING, PERFKIT

DEBUG = False
#: Checked on every request of the load, never reached.
NEWS_RATELIMITS: dict[str, str | None] = {"api": "1000000/m", "search": "1000000/m"}

PERFKIT = {
    **PERFKIT,
    # None: the default for the mode, "log" with DEBUG off (the demo says "warn").
    "QUERY_GUARD": {"MODE": None},
    # The probes of bench/faults.py (its PROBE_* constants): 5 a minute per client.
    "RATELIMITS": [
        {"path": "/login/", "method": "GET", "rate": "5/m", "key": "header:x-fault-client",
         "fail": "open", "group": "faults.open"},
        {"path": "/api/articles/async/", "method": "GET", "rate": "5/m",
         "key": "header:x-fault-client", "fail": "closed", "group": "faults.closed"},
    ],
}  # fmt: skip

LOGGING: dict[str, Any] = {
    **LOGGING,
    "formatters": {"timed": {"format": "%(created).3f %(name)s %(levelname)s %(message)s"}},
    "handlers": {**LOGGING["handlers"], "timed": {"class": "logging.StreamHandler",
                                                   "formatter": "timed"}},
    "loggers": {
        **LOGGING["loggers"],
        "django_perfkit": {"handlers": ["timed"], "level": "INFO"},
        # DEBUG: one line per Redis call that failed (not per call skipped by the breaker).
        "django_perfkit.redis": {"handlers": ["timed"], "level": "DEBUG", "propagate": False},
        "django.request": {"handlers": ["timed"], "level": "ERROR", "propagate": False},
    },
}  # fmt: skip
