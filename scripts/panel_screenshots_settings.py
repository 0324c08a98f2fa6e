"""Settings for scripts/panel_screenshots.py: the demo site, made to show every page.

Requests over 40 ms count as slow (the naive pages are), the API's rate limit
is low enough for a burst to be limited, and the panel refreshes itself.
"""

from __future__ import annotations

from testproject.settings import *  # noqa: F403
from testproject.settings import NEWS_RATELIMITS, PERFKIT

DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
NEWS_RATELIMITS = {**NEWS_RATELIMITS, "api": "20/m", "search": "10/m"}
PERFKIT = {
    **PERFKIT,
    "QUERY_GUARD": {"MODE": "log"},
    "PROFILER": {"SLOW_REQUEST_MS": 40, "MIN_INTERVAL": 0},
    "FLEET": {"FLUSH_INTERVAL": 0.5},
    "PANEL": {"REFRESH_SECONDS": 5, "MINUTES": 5},
}
