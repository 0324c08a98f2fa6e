"""A private PostgreSQL server for benchmarks: its own data directory and port.

The shared server has ``max_connections = 100``, fewer than a 100-request
stampede against an uncached competitor needs, and other sessions' load.
This one is started for the run (``fsync=off``: the numbers are about the
caches, not about disks) and removed afterwards.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.redis_servers import free_port


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else name


class PrivatePostgres:
    def __init__(self, options: str = "") -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="perfkit-bench-pg-"))
        self.user = "postgres"
        #: More server options (``-c name=value ...``).
        self.options = options

    def start(self) -> None:
        data = self.dir / "data"
        run_as: list[str] = []
        if os.geteuid() == 0:
            # initdb refuses to run as root: hand the directory to the postgres user.
            shutil.chown(self.dir, "postgres")
            run_as = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            [*run_as, _bin("initdb"), "-D", str(data), "-U", self.user, "-A", "trust"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir}"
            " -c max_connections=300 -c fsync=off -c synchronous_commit=off"
            " -c full_page_writes=off -c shared_buffers=128MB"
            f" {self.options}"
        )
        subprocess.run(
            [*run_as, _bin("pg_ctl"), "-D", str(data), "-o", options, "-w", "-l",
             str(self.dir / "log"), "start"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ready = subprocess.run(
                [_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("private PostgreSQL did not start")

    def createdb(self, name: str) -> None:
        subprocess.run(
            [_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name],
            check=True,
        )

    def psql(self, database: str, sql: str) -> str:
        """One statement's result as text (``psql -tA``); RuntimeError if it failed."""
        out = subprocess.run(
            [_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d",
             database, "-tAc", sql],
            capture_output=True, text=True,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"psql: {(out.stderr.strip().splitlines() or ['failed'])[-1]}")
        return out.stdout.strip()

    def stop(self) -> None:
        run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [*run_as, _bin("pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        shutil.rmtree(self.dir, ignore_errors=True)
