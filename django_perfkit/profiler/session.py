"""Profiling one real request with pyinstrument, when an authorised caller asks.

Who may ask (``PROFILER["HEADER"]``, ``X-Perfkit-Profile`` by default):

* with ``DEBUG`` on, a client whose ``REMOTE_ADDR`` is in ``INTERNAL_IPS``
  (header value ``1``, or ``html`` for the profile page instead of the response);
* a signed-in staff user (``1`` or ``html``). The user is known only once the
  authentication middleware has run, so such a profile starts before the view
  (``process_view``) and does not include the middleware;
* anyone presenting a valid token (``manage.py perfkit_token``) as the value:
  for production and ``curl``. The profile covers the whole request.

Anyone else: the header is ignored, with no profile, no error and no header
in the response that would tell it was seen. A caller gets one profile per
``MIN_INTERVAL`` seconds (a ``SET NX`` in Redis), so the header cannot be
used to load the servers; with Redis down or unconfigured there is nowhere
to keep a profile, and none is taken.

The profile is kept in Redis (at most ``MAX_PROFILES``, each for ``TTL``
seconds; never the app's database, never a file on the request path) as
pyinstrument's JSON, compressed, and rendered when someone opens it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
import zlib
from dataclasses import dataclass
from typing import Any, Literal

from django.conf import settings as django_settings
from django.http import HttpRequest

from django_perfkit.conf import get_settings
from django_perfkit.profiler.tokens import MAX_TOKEN_LENGTH, read_token
from django_perfkit.redis import LuaScript, get_gateway

__all__ = [
    "ProfileRun",
    "astart_for_caller",
    "load_profile",
    "recent_profiles",
    "resolve_caller",
    "start_for_caller",
    "start_for_staff",
]

logger = logging.getLogger("django_perfkit.profiler")

#: pyinstrument's: "disabled" under WSGI (one thread per request), "enabled"
#: under ASGI (follow this request's task, not the loop's other tasks).
AsyncMode = Literal["enabled", "disabled"]

#: Keeps a profile and its summary, and trims the index to the newest
#: MAX_PROFILES within TTL (deleting the others' entries and summaries).
#: KEYS: index (sorted set), entry, summaries (hash). ARGV: id, now, payload,
#: ttl, max, entry key prefix, summary.
_STORE = LuaScript(
    """
local ttl = tonumber(ARGV[4])
redis.call('SET', KEYS[2], ARGV[3], 'EX', ttl)
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[7])
local function drop(ids)
  for _, old in ipairs(ids) do
    redis.call('DEL', ARGV[6] .. old)
    redis.call('HDEL', KEYS[3], old)
    redis.call('ZREM', KEYS[1], old)
  end
end
drop(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[2]) - ttl))
local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[5])
if extra > 0 then
  drop(redis.call('ZRANGE', KEYS[1], 0, extra - 1))
end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[3], ttl)
return 1
""",
    name="profile-store",
)


def header_meta_name(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


@dataclass(slots=True)
class ProfileRun:
    """One request being profiled."""

    who: str
    html: bool
    #: Taken by PROFILER["SAMPLE_SLOW"]: kept only if the request turns out slow.
    sampled: bool = False
    profiler: Any = None
    #: Set once stored.
    profile_id: str | None = None
    #: What was stored (for ``html``: the page is rendered from it).
    payload: dict[str, Any] | None = None
    #: Under ASGI, a sync view runs in a worker thread that the event loop's
    #: profiler does not sample: a second profiler runs there (start_thread).
    thread_profiler: Any = None
    thread_session: Any = None
    #: Under WSGI, an async view runs on an event loop in a thread that asgiref
    #: starts for it: the request is pinned to one such thread
    #: (``AsyncSingleThreadContext``) and profiled there (start_loop_thread).
    loop_thread_context: Any = None

    def discard(self) -> None:
        profiler, self.profiler = self.profiler, None
        if profiler is not None:
            with contextlib.suppress(Exception):  # discarding: nothing to keep
                profiler.stop()

    def start_thread(self) -> None:
        """Profile the calling thread too (call it in the thread the sync view will run in)."""
        from pyinstrument import Profiler

        try:
            profiler = Profiler(interval=get_settings().profiler.interval, async_mode="disabled")
            profiler.start()
        except Exception:
            logger.debug("perfkit: could not profile the view's thread", exc_info=True)
            return
        self.thread_profiler = profiler

    def stop_thread(self) -> None:
        """Stop the thread's profiler (in that same thread); its samples join the profile."""
        profiler, self.thread_profiler = self.thread_profiler, None
        if profiler is None:
            return
        try:
            self.thread_session = profiler.stop()
        except Exception:
            logger.debug("perfkit: could not stop the view thread's profiler", exc_info=True)

    def start_loop_thread(self) -> bool:
        """Before an async view under WSGI: profile the thread its event loop runs in.

        Django runs such a view with ``async_to_sync``, on a new event loop in
        a new thread, which the request thread's profiler does not sample.
        ``AsyncSingleThreadContext`` (asgiref 3.10+) makes this request's
        ``async_to_sync`` calls share one thread; a profiler is started there
        first, and stopped there after the response (stop_loop_thread). Only
        profiled requests pay for it: two short event loops.
        """
        try:
            from asgiref.sync import AsyncSingleThreadContext, SyncToAsync, async_to_sync
        except ImportError:  # asgiref < 3.10: the profile shows the wait, not the view
            return False
        loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
        if loop is not None and loop.is_running():
            # A sync middleware chain under ASGI: the view runs on the server's
            # own loop, shared with other requests; it is not this thread's.
            # (A loop that is not running is a stale one: asgiref leaves it in
            # the thread-local of a thread that ran sync_to_async code.)
            return False

        async def start() -> None:
            self.start_thread()

        context = AsyncSingleThreadContext()  # type: ignore[no-untyped-call]
        context.__enter__()  # type: ignore[no-untyped-call]
        self.loop_thread_context = context
        try:
            async_to_sync(start)()
        except Exception:
            logger.debug("perfkit: could not profile the event loop's thread", exc_info=True)
        return True

    def stop_loop_thread(self) -> None:
        """Stop the loop thread's profiler (in that thread) and unpin the request."""
        context, self.loop_thread_context = self.loop_thread_context, None
        if context is None:
            return
        from asgiref.sync import async_to_sync

        async def stop() -> None:
            self.stop_thread()

        try:
            if self.thread_profiler is not None:
                async_to_sync(stop)()
        except Exception:
            logger.debug("perfkit: could not stop the event loop thread's profiler", exc_info=True)
        finally:
            context.__exit__(None, None, None)

    def start(self, async_mode: AsyncMode) -> bool:
        from pyinstrument import Profiler

        try:
            profiler = Profiler(interval=get_settings().profiler.interval, async_mode=async_mode)
            profiler.start()
        except Exception:  # another profiler on this thread, say
            logger.debug("perfkit: could not start the profiler", exc_info=True)
            return False
        self.profiler = profiler
        return True

    def stop(self, request: HttpRequest, status: int | None) -> str | None:
        """Stop, keep the profile in Redis; its id, or ``None`` if it could not be kept."""
        profiler, self.profiler = self.profiler, None
        if profiler is None:
            return None
        try:
            session = profiler.stop()
            # The request's own duration: a combined session adds the threads' up.
            duration = session.duration
            if self.thread_session is not None:
                from pyinstrument.session import Session

                session = Session.combine(session, self.thread_session)
            payload = {
                "meta": {
                    "method": request.method,
                    "path": request.path,
                    "status": status,
                    "duration_ms": round(duration * 1000, 3),
                    "who": self.who,
                    "at": time.time(),
                },
                "session": session.to_json(),
            }
            self.payload = payload
            blob = zlib.compress(json.dumps(payload).encode())
        except Exception:
            logger.exception("perfkit: the profile could not be rendered")
            return None
        profile_id = secrets.token_urlsafe(12)
        conf = get_settings().profiler
        gateway = get_gateway()
        index = gateway.key("profile", "store")
        entry = gateway.key("profile", "store", profile_id)
        summaries = gateway.key("profile", "store", "summaries")
        prefix = entry[: -len(profile_id)]
        summary = json.dumps(payload["meta"])
        stored = gateway.run_script(
            _STORE,
            [index, entry, summaries],
            [profile_id, time.time(), blob, conf.ttl, conf.max_profiles, prefix, summary],
            None,
        )
        if stored is None:
            return None
        self.profile_id = profile_id
        return profile_id


def _claim(who: str) -> bool:
    """One profile per caller per MIN_INTERVAL (and none without Redis)."""
    gateway = get_gateway()
    if not gateway.configured:
        return False
    interval_ms = max(1, int(get_settings().profiler.min_interval * 1000))
    key = gateway.key("profile", "limit", who)
    return bool(gateway.run(lambda client: client.set(key, 1, nx=True, px=interval_ms), False))


def release_claim(who: str) -> None:
    """Give back a claim that kept nothing (a sampled request that was fast after all)."""
    gateway = get_gateway()
    if gateway.configured:
        key = gateway.key("profile", "limit", who)
        gateway.run(lambda client: client.delete(key), 0)


def _header(request: HttpRequest) -> str | None:
    name = get_settings().profiler.header
    if not name:
        return None
    value = request.META.get(header_meta_name(name))
    if not value:
        return None
    value = str(value).strip()
    return value if len(value) <= MAX_TOKEN_LENGTH else None


def _internal(request: HttpRequest) -> bool:
    return bool(django_settings.DEBUG) and request.META.get("REMOTE_ADDR") in getattr(
        django_settings, "INTERNAL_IPS", ()
    )


def resolve_caller(request: HttpRequest) -> ProfileRun | None:
    """At the start of the request: a DEBUG-internal client or a token holder,
    with their per-interval slot claimed (not started yet). Reads the token's
    user from the database: call it off the event loop."""
    value = _header(request)
    if value is None:
        return None
    run: ProfileRun | None = None
    if value in ("1", "html"):
        if _internal(request):
            run = ProfileRun(f"ip:{request.META.get('REMOTE_ADDR')}", html=value == "html")
        else:
            # Maybe staff: known after the authentication middleware (process_view).
            request._perfkit_profile_pending = value  # type: ignore[attr-defined]
            return None
    else:
        user = read_token(value)
        if user is not None:
            run = ProfileRun(f"user:{user.pk}", html=False)
    if run is None or not _claim(run.who):
        return None
    return run


def start_for_caller(request: HttpRequest, async_mode: AsyncMode) -> ProfileRun | None:
    """The sync middleware's start: resolve the caller and start profiling."""
    run = resolve_caller(request)
    return run if run is not None and run.start(async_mode) else None


async def astart_for_caller(request: HttpRequest) -> ProfileRun | None:
    """The async middleware's start: the caller is resolved in a thread (a token
    is checked against the database), the profiler starts on the event loop."""
    if _header(request) is None:
        return None  # the common case: no thread hop
    from asgiref.sync import sync_to_async

    run = await sync_to_async(resolve_caller)(request)
    return run if run is not None and run.start("enabled") else None


def start_for_staff(request: HttpRequest, async_mode: AsyncMode) -> ProfileRun | None:
    """Before the view: a signed-in staff user who sent ``1`` or ``html``."""
    value = getattr(request, "_perfkit_profile_pending", None)
    if value is None:
        return None
    user = getattr(request, "user", None)
    if not (user is not None and user.is_active and user.is_staff):
        return None
    run = ProfileRun(f"user:{user.pk}", html=value == "html")
    if not _claim(run.who) or not run.start(async_mode):
        return None
    return run


def load_profile(profile_id: str) -> dict[str, Any] | None:
    """A stored profile (``{"meta": ..., "session": ...}``), or ``None``."""
    if not profile_id or len(profile_id) > 64:
        return None
    gateway = get_gateway()
    key = gateway.key("profile", "store", profile_id)
    blob = gateway.run(lambda client: client.get(key), None)
    if blob is None:
        return None
    try:
        data: dict[str, Any] = json.loads(zlib.decompress(blob))
    except (zlib.error, ValueError):
        return None
    return data


def recent_profiles(limit: int = 50) -> list[dict[str, Any]]:
    """The kept profiles' summaries, newest first: ``{"id", "method", "path",
    "status", "duration_ms", "who", "at"}`` (empty without Redis)."""
    gateway = get_gateway()
    index = gateway.key("profile", "store")
    summaries = gateway.key("profile", "store", "summaries")

    oldest = time.time() - get_settings().profiler.ttl

    def read(client: Any) -> list[Any]:
        # Newest first, and none older than TTL: the index is trimmed only when
        # a profile is stored, and an expired entry would link to a 404.
        ids = client.zrevrangebyscore(index, "+inf", oldest, start=0, num=max(1, limit))
        if not ids:
            return []
        return list(zip(ids, client.hmget(summaries, ids), strict=True))

    found = []
    pairs: list[tuple[Any, Any]] = gateway.run(read, [])
    for raw_id, text in pairs:
        if text is None:
            continue
        try:
            summary = dict(json.loads(text))
        except ValueError:
            continue
        summary["id"] = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
        found.append(summary)
    return found


def render(data: dict[str, Any], fmt: str) -> str:
    """pyinstrument's HTML page or speedscope JSON of a stored profile."""
    from pyinstrument.renderers import HTMLRenderer, SpeedscopeRenderer
    from pyinstrument.session import Session

    session = Session.from_json(data["session"])
    renderer = SpeedscopeRenderer() if fmt == "speedscope" else HTMLRenderer()
    return str(renderer.render(session))
