"""PostgreSQL sessions that block each other, for the pg_stat_activity tests."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from django.db import connection


@contextlib.contextmanager
def lock_and_wait(secret: str = "secret-value") -> Iterator[tuple[int, int, threading.Thread]]:
    """A session holding a lock, idle in its transaction, and one blocked behind it
    (its query compares to ``secret``, a value the pages must not show).

    Yields (holder's pid, waiter's pid, the thread the waiter's query runs in).
    """
    import psycopg

    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    holder = psycopg.connect(**params, autocommit=False)
    waiter = psycopg.connect(**params, autocommit=False)
    holder.execute("LOCK TABLE guardapp_label IN ACCESS EXCLUSIVE MODE")

    def wait() -> None:
        with contextlib.suppress(Exception):  # cancelled by the test, or ended below
            waiter.execute(f"SELECT count(*) FROM guardapp_label WHERE name = '{secret}'")

    blocked = threading.Thread(target=wait)
    blocked.start()
    try:
        yield holder.info.backend_pid, waiter.info.backend_pid, blocked
    finally:
        holder.rollback()
        blocked.join(timeout=10)
        holder.close()
        waiter.close()
