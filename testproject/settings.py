"""Settings for the django-perfkit demo news site (``testproject``).

Development/demo settings only. The database and cache are picked at import time:

* ``DATABASE_URL`` if set, else PostgreSQL on 127.0.0.1:5432 if it answers, else SQLite;
* ``REDIS_URL`` if set, else Redis on 127.0.0.1:6379 if it answers, else LocMemCache.

One line saying what was picked is printed to stderr (once per process; silence it
with ``PERFKIT_DEMO_QUIET=1``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from testproject.envconfig import (
    announce,
    describe_database,
    env_flag,
    parse_database_url,
    port_open,
    redact_url,
)
from testproject.settings_common import *  # noqa: F403  (apps, middleware, templates)

BASE_DIR = Path(__file__).resolve().parent
REPO_ROOT = BASE_DIR.parent

SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY",
    "django-insecure-perfkit-demo-only-do-not-use-this-key-in-production",
)
DEBUG = env_flag("DJANGO_DEBUG", "1")
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

# --- Database ---------------------------------------------------------------------------
PG_HOST, PG_PORT = "127.0.0.1", 5432
_database_url = os.environ.get("DATABASE_URL", "").strip()
if _database_url:
    _default_db: dict[str, Any] = parse_database_url(_database_url)
elif port_open(PG_HOST, PG_PORT, timeout=0.3):
    _default_db = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "perfkit_demo",
        "USER": "postgres",
        "PASSWORD": "",
        "HOST": PG_HOST,
        "PORT": str(PG_PORT),
        "CONN_MAX_AGE": 60,
    }
else:
    _default_db = {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}
DATABASES = {"default": _default_db}

# --- Cache ------------------------------------------------------------------------------
REDIS_DEFAULT_URL = "redis://127.0.0.1:6379/0"
_redis_url = os.environ.get("REDIS_URL", "").strip()
if not _redis_url and port_open("127.0.0.1", 6379, timeout=0.3):
    _redis_url = REDIS_DEFAULT_URL

if _redis_url:
    CACHES: dict[str, dict[str, Any]] = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": _redis_url,
            "KEY_PREFIX": "perfkit-demo",
            "OPTIONS": {
                # Short timeouts + swallowed errors: the demo keeps answering with Redis down.
                "SOCKET_CONNECT_TIMEOUT": 0.5,
                "SOCKET_TIMEOUT": 0.5,
                "IGNORE_EXCEPTIONS": True,
            },
        }
    }
    DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True
    PERFKIT: dict[str, Any] = {"REDIS_CACHE_ALIAS": "default", "KEY_PREFIX": "perfkit-demo"}
    _cache_desc = redact_url(_redis_url)
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "perfkit-demo",
        }
    }
    PERFKIT = {"REDIS_CACHE_ALIAS": None, "KEY_PREFIX": "perfkit-demo"}
    _cache_desc = "locmem (Redis not reachable)"

# The naive pages are there to be looked at: "warn" serves them with an
# X-Perfkit-Queries header and a warning in the console, where DEBUG's default
# ("raise") would answer them with the N+1 report as an error page.
PERFKIT["QUERY_GUARD"] = {"MODE": "warn"}

# Database-backed sessions (Django's default) so logins survive a Redis outage.
SESSION_ENGINE = "django.contrib.sessions.backends.db"

announce(
    "perfkit demo: database="
    f"{describe_database(_default_db, base_dir=str(REPO_ROOT))} "
    f"cache={_cache_desc}"
)
