"""Settings for perfkit's own test suite.

The suite runs against the real services: PostgreSQL and Redis on localhost
(override with the PERFKIT_TEST_PG* and PERFKIT_TEST_REDIS_URL variables). With
``PERFKIT_TEST_DB=sqlite`` it runs on SQLite instead, which is how tox proves
the embedded default. Redis: database 13 with the key prefix
``perfkit-test-<pid>``; the suite deletes only keys under its own prefix.
"""

from __future__ import annotations

import os

from testproject.settings_common import *  # noqa: F403  (apps, middleware, templates, URLs)

SECRET_KEY = "perfkit-tests-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]

# The suite's run id: its process id, or the parent's in a worker process that a
# test starts (tests/cache_race_worker.py) to share the run's database and keys.
RUN_ID = os.environ.get("PERFKIT_TEST_RUN_ID") or str(os.getpid())

if os.environ.get("PERFKIT_TEST_DB", "postgresql") == "sqlite":
    DATABASES = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        "other": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
    }
else:
    _pg = {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("PERFKIT_TEST_PGHOST", "127.0.0.1"),
        "PORT": os.environ.get("PERFKIT_TEST_PGPORT", "5432"),
        "USER": os.environ.get("PERFKIT_TEST_PGUSER", "postgres"),
        "PASSWORD": os.environ.get("PERFKIT_TEST_PGPASSWORD", ""),
    }
    DATABASES = {
        # Test databases named per process, like the Redis prefix below, so two
        # runs at once (make test and a tox env) do not collide.
        "default": {**_pg, "NAME": "perfkit", "TEST": {"NAME": f"test_perfkit_{RUN_ID}"}},
        # A second alias, so the collector is tested on more than "default".
        "other": {
            **_pg,
            "NAME": "perfkit_other",
            "TEST": {"NAME": f"test_perfkit_other_{RUN_ID}"},
        },
    }

    if os.environ.get("PERFKIT_TEST_WORKER"):
        # A worker connects to the test databases the parent's run created.
        for _config in DATABASES.values():
            _config["NAME"] = _config["TEST"]["NAME"]

REDIS_URL = os.environ.get("PERFKIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
# One prefix per test process, so two suites sharing this Redis database
# (make test and a tox env, say) never delete or count each other's keys.
KEY_PREFIX = f"perfkit-test-{RUN_ID}"

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": KEY_PREFIX,
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1},
    },
    "locmem": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
}

PERFKIT = {
    "REDIS_CACHE_ALIAS": "default",
    "KEY_PREFIX": KEY_PREFIX,
}

# Models with every kind of relation, for the N+1 detection tests.
INSTALLED_APPS = [*INSTALLED_APPS, "tests.guardapp"]  # noqa: F405

# Fleet stats flush from a background thread; the suite turns them on where it
# tests them, so that thread's Redis calls never meet a test's black-holed Redis.
PERFKIT["FLEET"] = {"ENABLED": False}
