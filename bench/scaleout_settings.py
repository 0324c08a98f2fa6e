"""Settings for ``bench/scaleout.py``: the demo site with three rate-limited routes.

``bench/faults_settings.py`` (the demo as shipped, production defaults,
perfkit's Redis failures logged with their time), with its route rules
replaced by three that the script counts, one per algorithm, each a budget of
``LIMIT`` requests a minute per ``X-Scaleout-Client`` header and
``fail="closed"``: a check that Redis could not decide answers 503, so a
failure can never pass for an allowed request.

With ``BENCH_REDIS_CLUSTER_URL`` set, perfkit's own keys (rate limits,
``.cache()`` entries and version tokens, cache on write, fleet stats) go to
that Redis Cluster (``PERFKIT["REDIS_URL"]`` with ``"REDIS_CLUSTER": True``);
Django's cache stays on ``REDIS_URL``.
"""

from __future__ import annotations

import os

from bench.faults_settings import *  # noqa: F403
from bench.faults_settings import PERFKIT

#: The budget of each rule (bench/scaleout.py reads it from here).
LIMIT = 50
#: path -> algorithm; each rule has a group of its own, named after the algorithm.
SCALEOUT_RULES = {"/login/": "sliding", "/comments/": "gcra", "/search/": "fixed"}

PERFKIT = {
    **PERFKIT,
    "RATELIMITS": [
        {"path": path, "method": "GET", "rate": f"{LIMIT}/m", "key": "header:x-scaleout-client",
         "algorithm": algorithm, "fail": "closed", "group": f"scaleout.{algorithm}"}
        for path, algorithm in SCALEOUT_RULES.items()
    ],
}  # fmt: skip

_cluster = os.environ.get("BENCH_REDIS_CLUSTER_URL")
if _cluster:
    PERFKIT.update(REDIS_URL=_cluster, REDIS_CLUSTER=True)
