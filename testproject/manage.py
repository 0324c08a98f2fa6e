#!/usr/bin/env python
"""Django's command-line utility for the django-perfkit demo site.

Run it from the repository root: ``python testproject/manage.py runserver``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROJECT_DIR.parent


def main() -> None:
    # `python testproject/manage.py` puts testproject/ itself first on sys.path, which would
    # make `news` importable under two names; swap it for the repository root so only the
    # `testproject.*` package names exist.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != PROJECT_DIR]
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    try:
        from django.core.management import execute_from_command_line
    except ImportError as exc:
        raise ImportError(
            "Couldn't import Django. Is it installed and is the virtualenv "
            "(.venv/bin/python) active?"
        ) from exc
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
