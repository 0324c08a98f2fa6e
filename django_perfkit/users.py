"""Loading ``request.user`` from async code.

``request.user`` is a lazy object whose first read queries the session and
user tables, which Django forbids on the event loop. Async code paths that
need it (a ``"user"`` rate-limit key, the ``"staff"`` Server-Timing mode) load
it first with this.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.http import HttpRequest


async def aload_user(request: HttpRequest) -> None:
    """Resolve ``request.user`` without blocking the loop (no-op without auth middleware)."""
    auser = getattr(request, "auser", None)
    if auser is not None:  # Django >= 5.0
        # Later reads of request.user then need no query.
        request.user = await auser()
    elif hasattr(request, "user"):
        await sync_to_async(lambda: getattr(request.user, "is_staff", False))()
