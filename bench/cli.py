"""What a competitor benchmark script does when run: its tables, or JSON for bench/run.py."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any


def report(run: Callable[[], dict[str, Any]], table: Callable[[dict[str, Any]], str]) -> None:
    """Run the benchmark; ``--json``: print one JSON line (``bench/run.py`` reads it)."""
    results = run()
    if "--json" in sys.argv:
        sys.stdout.write(json.dumps(results) + "\n")
    else:
        print(table(results))
