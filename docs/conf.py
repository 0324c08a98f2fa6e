"""Sphinx configuration for the django-perfkit documentation.

Build with ``make docs``, or directly::

    .venv/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

Warnings are errors (``-W``), so ``suppress_warnings`` stays empty: fix the
cause instead of hiding it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# -- Project information, from pyproject.toml ----------------------------------

project = "django-perfkit"
release = ""
if sys.version_info >= (3, 11):
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as f:
        _meta = tomllib.load(f)["project"]
    project = _meta["name"]
    release = _meta["version"]
# On Python 3.10 (no tomllib) the version is simply left out of the pages.
version = release
author = "django-perfkit developers"
copyright = "django-perfkit developers"

# -- Django, so that autodoc can import the package ----------------------------

sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()

# -- General configuration ----------------------------------------------------

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    # sphinx.ext.intersphinx is deliberately left out: the builds run without
    # network access, and an inventory that cannot be fetched is a warning.
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "deflist"]

autodoc_typehints = "description"
autodoc_member_order = "bysource"

# Keep empty: the build runs with -W and every warning should be fixed, not hidden.
suppress_warnings: list[str] = []

# -- HTML output ----------------------------------------------------------------

html_theme = "furo"
html_title = f"{project} {release}".strip()
