"""The request profiler: slow-request reports and pyinstrument profiles on a header.

* :mod:`.slow`: a request slower than ``PROFILER["SLOW_REQUEST_MS"]`` gets
  one structured log line and a summary kept in Redis (for the panel).
* :mod:`.tokens`: signed, expiring tokens (``manage.py perfkit_token``) that
  let a caller profile production with ``curl``.
* :mod:`.session`: who may profile, the per-caller limit, running
  pyinstrument around the request, and keeping profiles in Redis.
* :mod:`.views`: the stored profile, as pyinstrument's HTML or speedscope JSON.
"""

from __future__ import annotations

from django_perfkit.profiler.tokens import make_token, read_token

__all__ = ["make_token", "read_token"]
