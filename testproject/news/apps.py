from __future__ import annotations

from django.apps import AppConfig


class NewsConfig(AppConfig):
    name = "testproject.news"
    label = "news"
    verbose_name = "News (perfkit demo)"
    default_auto_field = "django.db.models.BigAutoField"
