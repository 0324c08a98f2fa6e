"""Root URLconf of the demo site."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    # perfkit's profiles (staff, INTERNAL_IPS under DEBUG, or a profile token).
    path("perfkit/", include("django_perfkit.urls")),
    path("", include("testproject.news.urls")),
]
