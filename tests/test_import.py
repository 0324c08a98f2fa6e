from __future__ import annotations

import subprocess
import sys


def test_import_reads_no_settings() -> None:
    # No DJANGO_SETTINGS_MODULE: an import that touched settings would raise.
    code = (
        "import sys, django_perfkit;"
        "assert 'django.conf' not in sys.modules, 'django.conf imported';"
        "assert 'redis' not in sys.modules, 'redis imported';"
        "print(django_perfkit.__version__)"
    )
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == __import__("django_perfkit").__version__


def test_public_api_is_reexported() -> None:
    import django_perfkit
    from django_perfkit.middleware import PerfkitMiddleware
    from django_perfkit.record import timer

    assert django_perfkit.PerfkitMiddleware is PerfkitMiddleware
    assert django_perfkit.timer is timer
    for name in django_perfkit.__all__:
        assert getattr(django_perfkit, name) is not None
