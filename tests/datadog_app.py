"""A tiny traced site, run by tests/test_datadog.py in a process of its own.

ddtrace patches Django when imported first (``import ddtrace.auto``), which
must not happen inside the test suite's own process. The traces go to the
Datadog APM test agent named by ``DD_TRACE_AGENT_URL``.
"""

from __future__ import annotations

import json
import sys

import ddtrace.auto  # noqa: F401  (patches Django: before Django is imported)
import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="perfkit-datadog-test",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django_perfkit"],
    MIDDLEWARE=["django_perfkit.middleware.PerfkitMiddleware"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
    PERFKIT={"REDIS_CACHE_ALIAS": None, "QUERY_GUARD": {"MODE": "log"}},
)
django.setup()

from django.db import connection  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.test import Client  # noqa: E402
from django.urls import path  # noqa: E402

import django_perfkit  # noqa: E402


def traced_view(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cursor:
        for i in range(3):
            cursor.execute("SELECT %s", [i])  # a loop: an N+1 by shape
        cursor.execute("SELECT %s", [2])  # the same again: a duplicate
    with django_perfkit.timer("pricing"):
        pass
    return HttpResponse("ok")


urlpatterns = [path("traced/", traced_view)]

if __name__ == "__main__":
    response = Client().get("/traced/")
    from ddtrace.trace import tracer

    tracer.flush()
    sys.stdout.write(json.dumps({"status": response.status_code}) + "\n")
