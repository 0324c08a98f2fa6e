"""URLconf for ``bench/requests.py``: the demo's, plus the competitors' own URLs."""

from __future__ import annotations

from django.conf import settings
from django.urls import include, path

from testproject.urls import urlpatterns as demo_urlpatterns

urlpatterns = list(demo_urlpatterns)

if "debug_toolbar" in settings.INSTALLED_APPS:
    from debug_toolbar.toolbar import debug_toolbar_urls

    urlpatterns += debug_toolbar_urls()
if "silk" in settings.INSTALLED_APPS:
    urlpatterns.append(path("silk/", include("silk.urls", namespace="silk")))
