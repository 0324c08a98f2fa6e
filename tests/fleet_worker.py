"""One app-server process for tests/test_fleet.py: counts requests, flushes them.

Run as ``python tests/fleet_worker.py <requests per route>`` with the suite's
``PERFKIT_TEST_RUN_ID`` (same Redis prefix). Prints its server id.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("PERFKIT_TEST_DB", "sqlite")

import django

django.setup()

from django_perfkit.fleet.stats import Recorder, _server_id  # noqa: E402
from django_perfkit.record import RequestRecord  # noqa: E402


def main() -> None:
    per_route = int(sys.argv[1])
    recorder = Recorder(background=False)
    for _ in range(per_route):
        for route, status, ms, queries in (
            ("articles/", 200, 20, 4),
            ("api/articles/", 500, 300, 2),
        ):
            record = RequestRecord(method="GET", path="/" + route)
            record.finished = record.started + ms / 1000
            record.status = status
            record.route = route
            record.db.count = queries
            recorder.add(record)
    assert recorder.flush(), "Redis did not take the counts"
    sys.stdout.write(_server_id() + "\n")


if __name__ == "__main__":
    main()
