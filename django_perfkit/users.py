"""Loading ``request.user`` from async code.

``request.user`` is a lazy object whose first read queries the session and
user tables, which Django forbids on the event loop. Async code paths that
need it (a ``"user"`` rate-limit key, the ``"staff"`` Server-Timing mode) load
it first with this.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject, empty


async def aload_user(request: HttpRequest) -> None:
    """Evaluate a still-lazy ``request.user`` in a thread; otherwise do nothing.

    ``request.user`` is never replaced: another middleware (token or JWT
    authentication) may have set it to something other than the session's user.
    """
    user = getattr(request, "user", None)
    if isinstance(user, SimpleLazyObject) and user._wrapped is empty:
        # Evaluating the lazy object loads the session and the user: in a
        # thread, then later reads on the loop find it already loaded.
        await sync_to_async(lambda: user.is_authenticated)()
