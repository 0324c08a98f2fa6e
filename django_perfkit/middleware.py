"""``PerfkitMiddleware``: opens the request record, runs the reporters.

Put it first in ``MIDDLEWARE`` so that its ``total`` covers every other
middleware, and so that the queries they make (sessions, auth) are counted.
It is sync and async capable: under ASGI with an async middleware chain it
runs without a thread hop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from contextvars import Token
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest
from django.utils.module_loading import import_string

from django_perfkit.conf import PerfkitSettings, get_settings
from django_perfkit.fleet.stats import enter_route, leave_route
from django_perfkit.profiler import sampling
from django_perfkit.profiler.session import (
    AsyncMode,
    ProfileRun,
    astart_for_caller,
    release_claim,
    start_for_caller,
    start_for_staff,
)
from django_perfkit.profiler.slow import _on_event_loop
from django_perfkit.queries import budget
from django_perfkit.queries.capture import QueryReport
from django_perfkit.queries.guard import Guard
from django_perfkit.ratelimit.decorators import Ratelimited
from django_perfkit.ratelimit.responses import ratelimited_response
from django_perfkit.ratelimit.rules import aenforce, enforce
from django_perfkit.record import RequestRecord, _current
from django_perfkit.reporters import REPORTERS
from django_perfkit.reporters.server_timing import allowed
from django_perfkit.users import aload_user

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
            # Django calls process_view in the handler's mode, wrapping a sync
            # method in a thread when they differ: give it a coroutine so a
            # rate-limit check never hops. (process_exception is always called
            # synchronously by Django, so it stays a plain method.)
            self.process_view = self._aprocess_view  # type: ignore[method-assign]

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        settings = get_settings()
        if not settings.enabled:
            return self.get_response(request)
        record = RequestRecord(method=request.method or "", path=request.path)
        _inherit(record)
        guard_mode = _open_guard(record, settings)
        profile = start_for_caller(request, "disabled") if settings.profiler.header else None
        if profile is not None:
            request._perfkit_profile_caller = profile  # type: ignore[attr-defined]
        token = _current.set(record)
        try:
            response = self.get_response(request)
        except BaseException:
            _stop_loop_thread_profile(request)
            _discard_profile(request, profile)
            leave_route(record)
            raise
        finally:
            _current.reset(token)
            _close_guard(record)
        _stop_loop_thread_profile(request)
        try:
            response = _finish_profile(record, request, response, profile)
            self._finish(record, request, response)
        finally:
            leave_route(record)  # whatever happened: not in flight any more
        self._report_to_outer(token, record)
        if guard_mode is not None:
            _enforce_guard(record, request, response, guard_mode, settings)
        return response

    async def __acall__(self, request: HttpRequest) -> Any:
        get_response: Callable[[HttpRequest], Awaitable[Any]] = self.get_response
        settings = get_settings()
        if not settings.enabled:
            return await get_response(request)
        record = RequestRecord(method=request.method or "", path=request.path)
        _inherit(record)
        guard_mode = _open_guard(record, settings)
        # "enabled": pyinstrument follows this request's task across awaits,
        # not the other tasks the loop runs meanwhile.
        profile = await astart_for_caller(request) if settings.profiler.header else None
        if profile is not None:
            request._perfkit_profile_caller = profile  # type: ignore[attr-defined]
        token = _current.set(record)
        try:
            response = await get_response(request)
        except BaseException:
            await _astop_view_thread_profile(request, profile)
            _discard_profile(request, profile)
            leave_route(record)
            raise
        finally:
            _current.reset(token)
            _close_guard(record)
        try:
            await _astop_view_thread_profile(request, profile)
            response = _finish_profile(record, request, response, profile)
            if settings.server_timing in _NEEDS_USER or guard_mode == "warn":
                # request.user is lazy and loading it queries the database, which
                # must not happen on the event loop.
                await aload_user(request)
            self._finish(record, request, response)
        finally:
            leave_route(record)  # whatever happened (a cancelled task too)
        self._report_to_outer(token, record)
        if guard_mode is not None:
            _enforce_guard(record, request, response, guard_mode, settings)
        return response

    def process_view(
        self, request: HttpRequest, view_func: Any, view_args: Any, view_kwargs: Any
    ) -> Any:
        # Route rules (PERFKIT["RATELIMITS"]): after the other middleware, so
        # request.user exists, and before the view, so a limited request costs
        # no database work.
        limited = enforce(request)
        if limited is None and hasattr(request, "_perfkit_profile_pending"):
            _start_staff_profile(request, "disabled")
        if limited is None:
            _maybe_sample(request, "disabled")
            # Only a profiled request pays for the view's mode check.
            run = _running_profile(request)
            if run is not None and iscoroutinefunction(view_func) and run.start_loop_thread():
                request._perfkit_loop_profile = run  # type: ignore[attr-defined]
        _mark_view_start(request)
        return limited

    async def _aprocess_view(
        self, request: HttpRequest, view_func: Any, view_args: Any, view_kwargs: Any
    ) -> Any:
        limited = await aenforce(request)
        if limited is None and hasattr(request, "_perfkit_profile_pending"):
            await sync_to_async(_load_user)(request)
            _start_staff_profile(request, "enabled")
        if limited is None and _running_profile(request) is None and _maybe_sampled(request):
            # The claim is a Redis call: off the event loop; the profiler starts on it.
            run = await sync_to_async(sampling.claim_sample)(request)
            if run is not None and run.start("enabled"):
                request._perfkit_profile_run = run  # type: ignore[attr-defined]
        if limited is None and not iscoroutinefunction(view_func):
            run = _running_profile(request)
            if run is not None:
                # Django runs a sync view in its thread-sensitive worker thread,
                # where this request's other sync code runs too: profile there.
                await sync_to_async(run.start_thread, thread_sensitive=True)()
        _mark_view_start(request)
        return limited

    def process_exception(self, request: HttpRequest, exception: Exception) -> Any:
        if not isinstance(exception, Ratelimited):
            return None
        return _ratelimited_view(request, exception)

    @staticmethod
    def _report_to_outer(token: Token[RequestRecord | None], record: RequestRecord) -> None:
        # A request served inside capture() (a test client call in a test with
        # a query budget): its queries count there too. Never so in production,
        # where no record is open around a request.
        outer = token.old_value
        if outer is not Token.MISSING and outer is not None:
            outer.absorb(record, get_settings().max_queries_recorded)

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
        if record.after_response:
            record.run_after_response()


def _inherit(record: RequestRecord) -> None:
    # A request served inside capture(explain=True) (the test client under
    # pytest --perfkit-explain) explains its queries too. Never so in
    # production, where no record is open around a request.
    outer = _current.get()
    if outer is not None and outer.explain:
        record.explain = True


def _mark_view_start(request: HttpRequest) -> None:
    record = _current.get()
    if record is not None:
        record.view_started = time.perf_counter()
        if get_settings().fleet.enabled:
            enter_route(record, request)


def _load_user(request: HttpRequest) -> None:
    user = getattr(request, "user", None)
    if user is not None:
        user.is_staff  # noqa: B018  (loads the lazy user in a thread, off the event loop)


def _start_staff_profile(request: HttpRequest, async_mode: AsyncMode) -> None:
    run = start_for_staff(request, async_mode)
    if run is not None:
        request._perfkit_profile_run = run  # type: ignore[attr-defined]


def _release_sample_claim(run: ProfileRun) -> None:
    if _on_event_loop():
        # Under ASGI: the Redis call leaves the loop (nobody waits for it).
        threading.Thread(target=release_claim, args=(run.who,), daemon=True).start()
    else:
        release_claim(run.who)


def _maybe_sampled(request: HttpRequest) -> bool:
    """Its route was slow lately (one dict lookup: the common answer is no)."""
    match = getattr(request, "resolver_match", None)
    return match is not None and match.route in sampling._slow_routes


def _maybe_sample(request: HttpRequest, async_mode: AsyncMode) -> None:
    """PROFILER["SAMPLE_SLOW"]: profile some requests of routes that were slow."""
    if _running_profile(request) is not None or not _maybe_sampled(request):
        return
    run = sampling.claim_sample(request)
    if run is not None and run.start(async_mode):
        request._perfkit_profile_run = run  # type: ignore[attr-defined]


def _running_profile(request: HttpRequest) -> ProfileRun | None:
    run: ProfileRun | None = getattr(request, "_perfkit_profile_caller", None)
    return run or getattr(request, "_perfkit_profile_run", None)


async def _astop_view_thread_profile(request: HttpRequest, profile: ProfileRun | None) -> None:
    run = profile or getattr(request, "_perfkit_profile_run", None)
    if run is not None and run.thread_profiler is not None:
        await sync_to_async(run.stop_thread, thread_sensitive=True)()


def _stop_loop_thread_profile(request: HttpRequest) -> None:
    run: ProfileRun | None = getattr(request, "_perfkit_loop_profile", None)
    if run is not None:
        del request._perfkit_loop_profile  # type: ignore[attr-defined]
        run.stop_loop_thread()


def _discard_profile(request: HttpRequest, profile: ProfileRun | None) -> None:
    for run in (profile, getattr(request, "_perfkit_profile_run", None)):
        if run is not None:
            run.discard()


def _finish_profile(
    record: RequestRecord, request: HttpRequest, response: Any, profile: ProfileRun | None
) -> Any:
    """Stop a running profile, keep it, and say where it is (or answer with it: ``html``)."""
    run = profile or getattr(request, "_perfkit_profile_run", None)
    if run is None:
        return response
    if run.sampled:
        slow_ms = get_settings().profiler.slow_request_ms
        if not slow_ms or record.duration * 1000 < slow_ms:
            run.discard()  # fast this time: nothing to keep, and the next sample may try
            _release_sample_claim(run)
            return response
    try:
        profile_id = run.stop(request, getattr(response, "status_code", None))
        if run.html and run.payload is not None:
            from django.http import HttpResponse

            from django_perfkit.profiler.session import render

            page = HttpResponse(render(run.payload, "html"))
            page["Cache-Control"] = "private, no-store"
            response.close()  # a file or stream the page replaces must be closed
            response = page
        if profile_id is not None and run.sampled:
            # Nobody asked: the slow-request record and the panel link to it.
            record.profile_id = profile_id
            record.profile_sampled = True
        elif profile_id is not None:
            record.profile_id = profile_id
            response[PROFILE_ID_HEADER] = profile_id
            try:
                from django.urls import reverse

                response[PROFILE_URL_HEADER] = reverse("perfkit:profile", args=[profile_id])
            except Exception:  # django_perfkit.urls not included
                pass
    except Exception:
        logger.exception("perfkit: the profile could not be kept")
    return response


PROFILE_ID_HEADER = "X-Perfkit-Profile-Id"
PROFILE_URL_HEADER = "X-Perfkit-Profile-Url"


def _open_guard(record: RequestRecord, settings: PerfkitSettings) -> str | None:
    """Start the query guard on the request's record, unless its mode is off."""
    if not settings.collect_queries:
        return None
    guard_settings = settings.query_guard
    mode = guard_settings.effective_mode()
    if mode == "off":
        return None
    # Installed for good: a process that guards every request would otherwise
    # wrap and unwrap QuerySet around each one.
    record.guard = Guard(guard_settings.nplusone_threshold).open(keep_installed=True)
    return mode


def _close_guard(record: RequestRecord) -> None:
    guard = record.guard
    if guard is not None:
        record.guard = None
        try:
            guard.close(record)
        except Exception:
            logger.exception("perfkit: the query guard failed")


def _enforce_guard(
    record: RequestRecord,
    request: HttpRequest,
    response: Any,
    mode: str,
    settings: PerfkitSettings,
) -> None:
    """Log, warn (header) or raise for the request's findings and budget overruns."""
    guard_settings = settings.query_guard
    if (
        mode != "warn"
        and not record.nplusone
        and not record.unused_prefetches
        and guard_settings.max_queries is None
        and guard_settings.max_duplicates is None
    ):
        return  # nothing to act on (the common case): no report to build
    report = QueryReport(record)
    try:
        acted = budget.enforce(
            report,
            where=f"{record.method} {record.route or record.path}",
            max_queries=guard_settings.max_queries,
            max_duplicates=guard_settings.max_duplicates,
            mode=mode,
            nplusone=mode,
        )
        if mode == "warn" and _may_see_details(request):
            # The findings acted on: not the allowlisted ones.
            response[QUERIES_HEADER] = _header_value(budget.summary(report, acted))
    except budget.QueryGuardError:
        raise  # "raise" mode: the point (a 500 with the report under DEBUG, a failing test)
    except Exception:
        logger.exception("perfkit: the query guard failed")  # perfkit's own error: logged


#: The ``warn`` mode's response header.
QUERIES_HEADER = "X-Perfkit-Queries"


def _may_see_details(request: HttpRequest) -> bool:
    # File names and relations are for the people who run the site.
    from django.conf import settings as django_settings

    return bool(django_settings.DEBUG) or allowed(request, "staff_or_internal")


def _header_value(text: str) -> str:
    text = " ".join(text.split())  # no newlines in a header
    text = text.encode("ascii", "replace").decode("ascii")
    return text if len(text) <= 2000 else text[:1997] + "..."


def _ratelimited_view(request: HttpRequest, exception: Any) -> Any:
    """The response for a ``Ratelimited`` raised by ``@ratelimit``: PERFKIT["RATELIMIT_VIEW"]
    (called as ``view(request, exception)``, like django-ratelimit's), or a 429."""
    view_path = get_settings().ratelimit_view
    if view_path:
        return import_string(view_path)(request, exception)
    usage = getattr(exception, "usage", None)
    # Ratelimited("a message") carries no usage dict: a plain 429 then.
    return ratelimited_response(request, usage if isinstance(usage, dict) else None)  # type: ignore[arg-type]
