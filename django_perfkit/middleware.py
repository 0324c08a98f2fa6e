"""``PerfkitMiddleware``: opens the request record, runs the reporters.

Put it first in ``MIDDLEWARE`` so that its ``total`` covers every other
middleware, and so that the queries they make (sessions, auth) are counted.
It is sync and async capable: under ASGI with an async middleware chain it
runs without a thread hop.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest

from django_perfkit.conf import get_settings
from django_perfkit.record import RequestRecord, _current
from django_perfkit.reporters import REPORTERS

logger = logging.getLogger("django_perfkit")

__all__ = ["PerfkitMiddleware"]

_NEEDS_USER = frozenset({"staff", "staff_or_internal"})


class PerfkitMiddleware:
    """Opens a :class:`~django_perfkit.record.RequestRecord` per request and,
    once the response exists, hands the closed record to each reporter."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            # Mark the instance so Django awaits it; the switch happens in
            # __call__ rather than by swapping dunder methods.
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        if not get_settings().enabled:
            return self.get_response(request)
        record = RequestRecord(method=request.method or "", path=request.path)
        token = _current.set(record)
        try:
            response = self.get_response(request)
        finally:
            _current.reset(token)
        self._finish(record, request, response)
        return response

    async def __acall__(self, request: HttpRequest) -> Any:
        get_response: Callable[[HttpRequest], Awaitable[Any]] = self.get_response
        settings = get_settings()
        if not settings.enabled:
            return await get_response(request)
        record = RequestRecord(method=request.method or "", path=request.path)
        token = _current.set(record)
        try:
            response = await get_response(request)
        finally:
            _current.reset(token)
        if settings.server_timing in _NEEDS_USER:
            # request.user is lazy and loading it queries the database, which
            # must not happen on the event loop.
            await _aload_user(request)
        self._finish(record, request, response)
        return response

    @staticmethod
    def _finish(record: RequestRecord, request: HttpRequest, response: Any) -> None:
        record.finish(getattr(response, "status_code", None))
        match = getattr(request, "resolver_match", None)
        if match is not None:
            record.route = match.route
        for reporter in REPORTERS:
            try:
                reporter(record, request, response)
            except Exception:
                # A reporter's bug must cost the report, not the response.
                logger.exception("perfkit: reporter %r failed", reporter)


async def _aload_user(request: HttpRequest) -> None:
    auser = getattr(request, "auser", None)
    if auser is not None:  # Django >= 5.0
        user = await auser()
        # Later reads of request.user then need no query.
        request.user = user
    elif hasattr(request, "user"):
        await sync_to_async(lambda: getattr(request.user, "is_staff", False))()
