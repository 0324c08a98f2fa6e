"""``defer=True``: recompute after the response, in one background thread per process.

Why a thread and not a task queue: the recompute is the same small read the
request would make, and what it needs is that the writer does not wait for it
and that a burst of writes to one key costs one recompute, not one per write.
A write made while a request is served queues its keys once the response is
built (the request's record runs them then: ``RequestRecord.after_response``);
elsewhere (a command, a task) at once. A key then waits ``DEFER_DELAY``
seconds; the writes that arrive meanwhile join it. A key that is being recomputed when another write
comes is queued again, so the last write is always followed by a recompute
that started after it committed.

Bounded: at most ``DEFER_MAX_PENDING`` keys wait; beyond that a key is only
invalidated (its token was bumped at commit already), so the next read
recomputes it. Nothing is lost that matters either if the process exits with
keys waiting: their entries were invalidated at commit, never left stale.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from django.db import close_old_connections

from django_perfkit.conf import get_settings
from django_perfkit.record import current_record

if TYPE_CHECKING:
    from django_perfkit.cache.onwrite.function import OnWriteFunction

__all__ = ["DeferredRecomputes", "flush_deferred", "worker"]

logger = logging.getLogger("django_perfkit.cache")


class DeferredRecomputes:
    """The per-process queue of deferred recomputes and the thread that runs them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        #: (function id, entry text) -> (function, arguments, text, due time)
        self._pending: dict[tuple[int, str], tuple[Any, dict[str, Any], str, float]] = {}
        self._running = 0
        self._thread: threading.Thread | None = None
        self._pid = 0
        #: Counters since the process started: keys queued, writes that joined
        #: a queued key, keys dropped (queue full), recomputes run, recomputes failed.
        self.queued = 0
        self.coalesced = 0
        self.dropped = 0
        self.done = 0
        self.failed = 0

    def enqueue(
        self, function: OnWriteFunction[Any, Any], named: dict[str, Any], text: str
    ) -> None:
        """Queue a recompute: once the response is built, when a request is being served."""
        record = current_record()
        if record is not None and record.finished is None:
            if record.after_response is None:
                record.after_response = []
            record.after_response.append(functools.partial(self.put, function, named, text))
            return
        self.put(function, named, text)

    def put(self, function: OnWriteFunction[Any, Any], named: dict[str, Any], text: str) -> None:
        cache = get_settings().cache
        key = (id(function), text)
        with self._cond:
            self._start()
            if key in self._pending:
                self.coalesced += 1
                return
            if len(self._pending) >= cache.defer_max_pending:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    logger.warning(
                        "perfkit: %d deferred recomputes waiting, the most DEFER_MAX_PENDING "
                        "allows; %s(%s) is invalidated instead (%d so far)",
                        len(self._pending),
                        function.name,
                        text,
                        self.dropped,
                    )
                return
            due = time.monotonic() + cache.defer_delay
            self._pending[key] = (function, named, text, due)
            self.queued += 1
            self._cond.notify()

    def _start(self) -> None:
        pid = os.getpid()
        if self._thread is not None and self._pid == pid and self._thread.is_alive():
            return
        if self._pid != pid:
            # A forked child: the parent's queue and thread are not ours.
            self._pending.clear()
            self._running = 0
        self._pid = pid
        self._thread = threading.Thread(
            target=self._loop, name="perfkit-deferred-recomputes", daemon=True
        )
        self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                # Same delay for every key: insertion order is due order.
                key, (function, named, text, due) = next(iter(self._pending.items()))
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                del self._pending[key]
                self._running += 1
            try:
                function.recompute(named, text)
            except Exception:
                with self._cond:
                    self.failed += 1  # logged by recompute()
            finally:
                with self._cond:
                    self._running -= 1
                    self.done += 1
                    idle = not self._pending
                    self._cond.notify_all()
            if idle:
                # Respect CONN_MAX_AGE for this thread's connection, as a
                # request would at its end (a failure must not end the thread).
                try:
                    close_old_connections()
                except Exception:
                    logger.warning(
                        "perfkit: closing the worker's connections failed", exc_info=True
                    )

    def flush(self, timeout: float | None = None) -> bool:
        """Run every waiting recompute now and wait for them; False on timeout.

        For tests, benchmarks and commands that exit after writing.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if self._pending:
                self._start()  # a thread that died (or a forked child) is replaced
            now = time.monotonic()
            for key, (function, named, text, _due) in list(self._pending.items()):
                self._pending[key] = (function, named, text, now)
            self._cond.notify_all()
            while self._pending or self._running:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left if left is not None else 0.05)
        return True

    def waiting(self) -> int:
        with self._cond:
            return len(self._pending) + self._running


worker = DeferredRecomputes()


def _after_fork_in_child() -> None:
    # The parent's worker thread does not exist here, and its lock may have
    # been held at the fork: start over with a fresh queue.
    global worker
    worker = DeferredRecomputes()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def flush_deferred(timeout: float | None = None) -> bool:
    """Run the process's waiting ``defer=True`` recomputes now and wait for them."""
    return worker.flush(timeout)
