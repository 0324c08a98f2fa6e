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
        from django_perfkit.collectors import db, templates
        from django_perfkit.conf import reset
        from django_perfkit.queries import checks as index_checks  # noqa: F401  (perfkit.W012)

        setting_changed.connect(reset, dispatch_uid="django_perfkit.conf.reset")
        connection_created.connect(db.install, dispatch_uid="django_perfkit.collectors.db")
        db.install_on_all_connections()
        templates.install()
        if uses_queryset_cache():
            # Only a project with cached querysets pays for watching its writes.
            from django_perfkit.cache import watch_writes

            watch_writes()
        # @cached_on_write functions start the watcher when they are registered
        # (here, those decorated while the models were loading).
        from django_perfkit.cache.onwrite import registry

        registry.register_waiting()


def uses_queryset_cache() -> bool:
    """Does any model have a manager whose querysets have ``.cache()``?"""
    from django.apps import apps

    from django_perfkit.cache.queryset import CachedQuerySetMixin

    for model in apps.get_models():
        for manager in model._meta.managers:
            queryset_class = getattr(manager, "_queryset_class", None)
            if isinstance(queryset_class, type) and issubclass(queryset_class, CachedQuerySetMixin):
                return True
    return False
