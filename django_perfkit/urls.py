"""perfkit's URLs: ``path("perfkit/", include("django_perfkit.urls"))``.

The panel (staff only by default, ``PERFKIT["PANEL"]``) and the stored
profiles. Anyone not allowed gets a 404.
"""

from __future__ import annotations

from django.urls import path

from django_perfkit.panel import views as panel
from django_perfkit.profiler import views as profiles

app_name = "perfkit"

urlpatterns = [
    path("", panel.overview, name="overview"),
    path("routes/", panel.routes, name="routes"),
    path("slow/", panel.slow, name="slow"),
    path("profiles/", panel.profiles, name="profiles"),
    path("ratelimits/", panel.ratelimits, name="ratelimits"),
    path("database/", panel.database, name="database"),
    path("database/signal/", panel.signal, name="database-signal"),
    path("assets/panel.css", panel.panel_css, name="panel-css"),
    path("assets/panel.js", panel.panel_js, name="panel-js"),
    path("profiles/<slug:profile_id>/", profiles.profile_html, name="profile"),
    path(
        "profiles/<slug:profile_id>/speedscope.json",
        profiles.profile_speedscope,
        name="profile-speedscope",
    ),
]
