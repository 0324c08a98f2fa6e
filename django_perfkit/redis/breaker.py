"""A circuit breaker for perfkit's Redis calls.

When Redis is stopped or black-holed, every call would otherwise wait for its
timeout: 50 ms added to every request that touches a rate limit or a cached
queryset, which is how a cache outage becomes a site outage. After
``BREAKER_FAILURES`` consecutive failures the breaker opens and calls are skipped
at once for ``BREAKER_COOLDOWN`` seconds; then one trial call goes through
(half-open) and its result closes the breaker or opens it for another cool-down.

One breaker per process serves the sync and the async client alike: Redis is
down for both.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("django_perfkit.redis")


class CircuitBreaker:
    """Closed (calls go through), open (calls skipped), half-open (one trial call)."""

    __slots__ = (
        "threshold",
        "cooldown",
        "_clock",
        "_lock",
        "_consecutive",
        "_opened_at",
        "_trial_in_flight",
        "times_opened",
    )

    def __init__(
        self,
        threshold: int,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = max(1, threshold)
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._consecutive = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False
        #: How often the breaker has opened in this process (for logs and the panel).
        self.times_opened = 0

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"``."""
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.cooldown:
            return "half-open"
        return "open"

    def allow(self) -> bool:
        """May a call go to Redis now?"""
        if self._opened_at is None:  # the fast path: no lock while Redis is healthy
            return True
        return self._allow_while_open()

    def _allow_while_open(self) -> bool:
        with self._lock:
            opened_at = self._opened_at  # may have closed while we waited for the lock
            if opened_at is None:
                return True
            if self._clock() - opened_at < self.cooldown:
                return False
            # Half-open: exactly one caller tries; the rest keep skipping until
            # that trial reports back.
            if self._trial_in_flight:
                return False
            self._trial_in_flight = True
            return True

    def record_success(self) -> None:
        """A call succeeded: close the breaker."""
        if self._opened_at is None and self._consecutive == 0:
            return
        with self._lock:
            was_open = self._opened_at is not None
            self._consecutive = 0
            self._opened_at = None
            self._trial_in_flight = False
        if was_open:
            logger.info("perfkit: Redis answers again; circuit breaker closed")

    def record_failure(self, exc: BaseException | None = None) -> None:
        """A call failed: count it; open (or re-open) the breaker at the threshold."""
        with self._lock:
            self._consecutive += 1
            trial_failed = self._trial_in_flight
            self._trial_in_flight = False
            opening = self._consecutive >= self.threshold and (
                self._opened_at is None or trial_failed
            )
            if opening:
                first_open = self._opened_at is None
                self._opened_at = self._clock()
                if first_open:
                    self.times_opened += 1
        if opening and not trial_failed:
            # Logged once per outage, not once per request.
            logger.warning(
                "perfkit: Redis failed %d times in a row (%s); skipping Redis for %.1f s "
                "at a time until it answers (degraded mode)",
                self._consecutive,
                f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error",
                self.cooldown,
            )
