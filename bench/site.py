"""The demo site as the load benchmarks serve it: its environment, its data, its commands.

``bench/requests.py``, ``bench/stack.py``, ``bench/faults.py`` and
``bench/scaleout.py`` each run the demo (``testproject``) under gunicorn
against a private PostgreSQL and Redis, with a settings module of their own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.pgserver import PrivatePostgres

ROOT = Path(__file__).resolve().parent.parent
MANAGE = str(ROOT / "testproject" / "manage.py")


def site_env(settings: str, pg: PrivatePostgres, database: str, redis_url: str) -> dict[str, str]:
    """This process's environment for the site: no ddtrace or Django variables of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DD_", "DJANGO_"))}
    env.update(
        DJANGO_SETTINGS_MODULE=settings,
        DATABASE_URL=f"postgres://{pg.user}@127.0.0.1:{pg.port}/{database}",
        REDIS_URL=redis_url,
        PERFKIT_DEMO_QUIET="1",
        PYTHONPATH=str(ROOT),
    )
    return env


def manage(python: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``manage.py <args>`` with ``python``, in the site's environment."""
    return subprocess.run(
        [python, MANAGE, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def prepare(env: dict[str, str]) -> None:
    """Create the database, its schema and the demo's data (2,000 articles) if empty.

    Run with the project's own environment: ``seed`` needs model_bakery.
    """
    for args in (["prepare_db"], ["migrate", "--noinput"], ["seed", "--if-empty"]):
        print(f"bench: manage.py {' '.join(args)} ...", file=sys.stderr, flush=True)
        out = manage(sys.executable, env, *args)
        if out.returncode != 0:
            tail = " / ".join(out.stderr.strip().splitlines()[-3:]) or "failed"
            raise RuntimeError(f"manage.py {args[0]} failed: {tail}")
