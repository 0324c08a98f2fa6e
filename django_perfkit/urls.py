"""perfkit's URLs: ``path("perfkit/", include("django_perfkit.urls"))``."""

from __future__ import annotations

from django.urls import path

from django_perfkit.profiler import views

app_name = "perfkit"

urlpatterns = [
    path("profiles/<slug:profile_id>/", views.profile_html, name="profile"),
    path(
        "profiles/<slug:profile_id>/speedscope.json",
        views.profile_speedscope,
        name="profile-speedscope",
    ),
]
