"""What a competitor benchmark script does when run: its tables, or JSON for bench/run.py."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def report(run: Callable[[], dict[str, Any]], table: Callable[[dict[str, Any]], str]) -> None:
    """Run the benchmark; ``--json``: print one JSON line (``bench/run.py`` reads it)."""
    results = run()
    if "--json" in sys.argv:
        sys.stdout.write(json.dumps(results) + "\n")
    else:
        print(table(results))


def git_commit() -> str:
    """The short commit id of the working tree the numbers were measured on."""
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def stored_table(result: Path, table: Callable[[dict[str, Any]], str]) -> str | None:
    """The table of a result kept on disk by a slow benchmark, or None if never measured."""
    if not result.exists():
        return None
    return table(json.loads(result.read_text()))
