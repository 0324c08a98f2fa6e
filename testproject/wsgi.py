"""WSGI entry point for the demo site: ``gunicorn testproject.wsgi`` from the repo root."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")

application = get_wsgi_application()
