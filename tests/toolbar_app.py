"""A site with django-debug-toolbar and perfkit's toolbar panel, for tests/test_toolbar.py.

Run in a process of its own: the toolbar must be in ``INSTALLED_APPS`` and
the URLconf, which the suite's own settings do not have. Prints the page
(with the toolbar's panels rendered into it) as JSON.
"""

from __future__ import annotations

import json
import sys

import django
from django.conf import settings

order = sys.argv[1] if len(sys.argv) > 1 else "perfkit-first"  # then --asgi, maybe
middleware = [
    "django_perfkit.middleware.PerfkitMiddleware",
    "debug_toolbar.middleware.DebugToolbarMiddleware",
]
if order == "toolbar-first":
    middleware.reverse()

settings.configure(
    DEBUG=True,
    SECRET_KEY="perfkit-toolbar-test",
    ALLOWED_HOSTS=["*"],
    INTERNAL_IPS=["127.0.0.1"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[
        "django.contrib.contenttypes",
        "django.contrib.auth",
        "django.contrib.staticfiles",
        "debug_toolbar",
        "django_perfkit",
    ],
    MIDDLEWARE=middleware,
    TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}],
    STATIC_URL="/static/",
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
    PERFKIT={"REDIS_CACHE_ALIAS": None, "QUERY_GUARD": {"MODE": "log"}},
    DEBUG_TOOLBAR_PANELS=["django_perfkit.panel.toolbar.PerfkitToolbarPanel"],
    DEBUG_TOOLBAR_CONFIG={"RENDER_PANELS": True, "IS_RUNNING_TESTS": False},
)
django.setup()

from debug_toolbar.toolbar import debug_toolbar_urls  # noqa: E402
from django.db import connection  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.test import Client  # noqa: E402
from django.urls import path  # noqa: E402


def page(request: HttpRequest) -> HttpResponse:
    # A sync view, also under ASGI (in a thread): the record is in the context.
    with connection.cursor() as cursor:
        for i in range(3):
            cursor.execute("SELECT %s", [i])  # a loop: an N+1 by shape
    return HttpResponse("<html><body><p>a page</p></body></html>")


urlpatterns = [path("page/", page), *debug_toolbar_urls()]

if __name__ == "__main__":
    if "--asgi" in sys.argv:  # the toolbar's async path: the record follows the request
        import asyncio

        from django.test import AsyncClient

        response = asyncio.run(AsyncClient().get("/page/", REMOTE_ADDR="127.0.0.1"))
    else:
        response = Client().get("/page/", REMOTE_ADDR="127.0.0.1")
    sys.stdout.write(
        json.dumps({"status": response.status_code, "html": response.content.decode()}) + "\n"
    )
