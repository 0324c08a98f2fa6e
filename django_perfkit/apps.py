from __future__ import annotations

from django.apps import AppConfig


class PerfkitConfig(AppConfig):
    name = "django_perfkit"
    label = "django_perfkit"
    verbose_name = "django-perfkit"

    def ready(self) -> None:
        from django.core.signals import setting_changed
        from django.db.backends.signals import connection_created

        from django_perfkit import checks  # noqa: F401  (registers the system checks)
        from django_perfkit.collectors import db
        from django_perfkit.conf import reset

        setting_changed.connect(reset, dispatch_uid="django_perfkit.conf.reset")
        connection_created.connect(db.install, dispatch_uid="django_perfkit.collectors.db")
        db.install_on_all_connections()
