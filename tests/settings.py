"""Settings for perfkit's own test suite.

The suite runs against the real services: PostgreSQL and Redis on localhost
(override with PERFKIT_TEST_DATABASE_URL-style variables below). With
``PERFKIT_TEST_DB=sqlite`` it runs on SQLite instead, which is how tox proves
the embedded default. Redis: database 13 with the key prefix ``perfkit-test``;
the suite deletes only keys under that prefix.
"""

from __future__ import annotations

import os

SECRET_KEY = "perfkit-tests-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_perfkit",
    "testproject.news",
]

MIDDLEWARE = [
    "django_perfkit.middleware.PerfkitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "testproject.urls"
STATIC_URL = "/static/"
LOGIN_REDIRECT_URL = "/"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

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
        "default": {**_pg, "NAME": "perfkit", "TEST": {"NAME": "test_perfkit"}},
        # A second alias, so the collector is tested on more than "default".
        "other": {**_pg, "NAME": "perfkit_other", "TEST": {"NAME": "test_perfkit_other"}},
    }

REDIS_URL = os.environ.get("PERFKIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
KEY_PREFIX = "perfkit-test"

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
