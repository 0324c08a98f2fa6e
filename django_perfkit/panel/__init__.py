"""The perfkit panel: what every app server is serving, for the people running the site.

``path("perfkit/", include("django_perfkit.urls"))`` serves it. Pages
(:mod:`~django_perfkit.panel.views`): Overview, Routes, Slow requests,
Profiles, Rate limits and Database (PostgreSQL activity,
:mod:`~django_perfkit.panel.database`). Who may open it:
:mod:`~django_perfkit.panel.access`. Charts are inline SVG
(:mod:`~django_perfkit.panel.svg`).
"""
