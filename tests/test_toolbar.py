"""perfkit's django-debug-toolbar panel, in a real toolbar (tests/toolbar_app.py)."""

from __future__ import annotations

import html
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("debug_toolbar")

ROOT = Path(__file__).resolve().parent.parent


def page(order: str, *extra: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "toolbar_app.py"), order, *extra],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == 200
    return str(result["html"])


@pytest.mark.parametrize("handler", ["wsgi", "asgi"])
def test_the_panel_shows_the_requests_queries_and_nplusone(handler: str) -> None:
    text = page("perfkit-first", f"--{handler}")
    assert "3 queries, 1 N+1" in text  # the nav subtitle
    content = html.unescape(text)
    assert "N+1 queries" in content
    assert "SELECT ?" in content  # the repeated shape
    assert "run one query for all the rows before the loop" in content  # the fix
    source = (ROOT / "tests" / "toolbar_app.py").read_text().splitlines()
    line = next(n for n, text in enumerate(source, 1) if 'cursor.execute("SELECT %s"' in text)
    assert f"tests/toolbar_app.py:{line} in page" in content  # where the loop is


def test_the_panel_says_where_the_middleware_goes() -> None:
    text = html.unescape(page("toolbar-first"))
    assert "put django_perfkit.middleware.PerfkitMiddleware above DebugToolbarMiddleware" in (
        text.replace("<code>", "").replace("</code>", "")
    )
