"""Virtualenvs for the competitors, one each under ``.bench/venvs`` (made on first use).

Competitors patch Django or need other versions of it, so each runs in a
process and a virtualenv of its own; perfkit runs in the project's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / ".bench" / "venvs"


def python_for(name: str, requirements: list[str] | None) -> str:
    """The interpreter of ``name``'s virtualenv (the project's own for ``None``)."""
    if requirements is None:
        return sys.executable
    venv = VENVS / name
    stamp = venv / ".installed"
    wanted = "\n".join(requirements)
    if not stamp.exists() or stamp.read_text() != wanted:
        print(f"bench: making {venv.relative_to(ROOT)} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
             "--disable-pip-version-check", *requirements],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        stamp.write_text(wanted)
    return str(venv / "bin" / "python")
