"""Fleet stats: what every app server is serving, per route and minute, in Redis.

Every process counts its requests in memory (:class:`~.stats.Recorder`, fed
by the ``report_fleet`` reporter) and flushes the counts to Redis once per
``FLUSH_INTERVAL`` in one pipeline, from a background thread: no Redis call
on the request path. :func:`~.stats.fleet_snapshot` adds up every live
server's counts; ``manage.py perfkit_top`` shows them.
"""

from __future__ import annotations

from django_perfkit.fleet.stats import BUCKETS_MS, Recorder, fleet_snapshot, recorder

__all__ = ["BUCKETS_MS", "Recorder", "fleet_snapshot", "recorder"]
