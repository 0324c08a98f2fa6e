from __future__ import annotations

from django.apps import AppConfig


class NewsConfig(AppConfig):
    name = "testproject.news"
    label = "news"
    verbose_name = "News (perfkit demo)"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the @cached_on_write functions (and their receivers) in
        # every process, not only in those that happen to import the views.
        from . import stats  # noqa: F401
