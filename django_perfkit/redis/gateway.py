"""The Redis gateway: the one way perfkit talks to Redis.

Every feature (rate limits, ``.cache()``, cache on write, fleet stats) goes
through :func:`get_gateway`, so they share one failure policy:

* **its own connections, with short timeouts.** The server, database and
  credentials come from the django-redis cache named by ``REDIS_CACHE_ALIAS``
  (plain or Sentinel), or from ``REDIS_URL`` (plain or, with ``REDIS_CLUSTER``,
  a Redis Cluster). The sockets are perfkit's own, with ``REDIS_CONNECT_TIMEOUT``
  and ``REDIS_TIMEOUT`` (50 ms by default): the site's cache may be happy to
  wait a second for Redis, a rate-limit check is not.
* **a circuit breaker** (:mod:`.breaker`) so an outage costs a few timeouts, not
  one per request.
* **a failure counter**, per process and in the request record.
* **a default instead of an exception.** :meth:`RedisGateway.run` returns the
  caller's ``default`` when Redis fails; each feature documents what it does
  then (serve uncached, let the request through, ...). perfkit never turns a
  Redis outage into a 500.

Keys: everything perfkit stores starts with ``KEY_PREFIX``, and every key is
built by :meth:`RedisGateway.key` with a hash tag (``perfkit:{ratelimit:login}:...``)
so that a multi-key command or script touches one Redis Cluster slot.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis
import redis.asyncio
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from django_perfkit.conf import PerfkitSettings, get_settings
from django_perfkit.record import current_record
from django_perfkit.redis.breaker import CircuitBreaker
from django_perfkit.redis.scripts import ArgT, KeyT, LuaScript, ReplySpin

logger = logging.getLogger("django_perfkit.redis")

T = TypeVar("T")

#: What an outage looks like from redis-py: refused or reset connections, timeouts
#: (a black-holed server), a cluster that lost its slots, or an OS-level socket error.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    RedisClusterException,
    OSError,
    asyncio.TimeoutError,
)


#: Everything the gateway treats as "Redis is not answering properly".
_FAILURES: tuple[type[BaseException], ...] = (*OUTAGE_ERRORS, RedisError)


class RedisNotConfigured(Exception):
    """perfkit was configured without Redis (``REDIS_CACHE_ALIAS = None`` and no ``REDIS_URL``)."""


class RedisGateway:
    """Clients, keys, scripts and the failure policy for perfkit's Redis calls."""

    def __init__(self, settings: PerfkitSettings) -> None:
        self.settings = settings
        #: Every key perfkit stores starts with this (``KEY_PREFIX``).
        self.prefix = settings.key_prefix
        #: False when perfkit runs without Redis: ``REDIS_CACHE_ALIAS = None`` and no
        #: ``REDIS_URL``, or an alias that is not a django-redis cache (system check
        #: W004). Every call then returns its default at once.
        self.configured = settings.redis_url is not None or (
            settings.redis_cache_alias is not None
            and is_django_redis_alias(settings.redis_cache_alias)
        )
        #: The process-wide :class:`CircuitBreaker` for perfkit's Redis calls.
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown)
        #: Redis calls that failed or were skipped, in this process.
        self.failures = 0
        self._lock = threading.Lock()
        self._client: Any = None
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )

    # -- keys ---------------------------------------------------------------

    def key(self, feature: str, tag: str, *parts: str | int) -> str:
        """``<prefix>:{<feature>:<tag>}:<part>:...``.

        The ``{...}`` hash tag decides the Redis Cluster slot: keys that one
        script or transaction touches together must share ``feature`` and ``tag``.
        """
        if not parts:  # the common case (a rate-limit key): no generator to run
            return f"{self.prefix}:{{{feature}:{tag}}}"
        rest = "".join(f":{p}" for p in parts)
        return f"{self.prefix}:{{{feature}:{tag}}}{rest}"

    # -- clients ------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The sync client (``redis.Redis`` or ``RedisCluster``), built on first use."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = _build_sync_client(self.settings)
                client = self._client
        return client

    def async_client(self) -> Any:
        """The ``redis.asyncio`` client for the running event loop.

        redis.asyncio connections belong to the loop that opened them, so each
        loop gets its own client; under an ASGI server that is one per process.
        """
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            client = self._async_clients[loop] = _build_async_client(self.settings)
        return client

    @staticmethod
    def short_lived_loop() -> bool:
        """Is the running event loop one that lives for a single call?

        An async view served by WSGI runs through ``async_to_sync``, which
        makes a new event loop in a worker thread for each request and closes
        it afterwards. A ``redis.asyncio`` client cached for such a loop would
        leave its sockets open and connect anew on every request. ASGI servers
        (and test runners) run their one loop in the main thread.
        """
        return threading.current_thread() is not threading.main_thread()

    def close(self) -> None:
        """Close the sync client's connections, and schedule the async clients' closing.

        Called when the settings change and the gateway is replaced. An async
        client can only be closed on its own loop: it is closed there if that
        loop is still running, and dropped if the loop is gone.
        """
        client, self._client = self._client, None
        if client is not None:
            client.close()
            pool = getattr(client, "connection_pool", None)  # a cluster client has none
            if pool is not None:
                # A pool passed in explicitly is not closed by the client.
                pool.disconnect()
        clients = list(self._async_clients.items())
        self._async_clients.clear()
        for loop, async_client in clients:
            if loop.is_closed() or not loop.is_running():
                continue
            loop.call_soon_threadsafe(_schedule_close, loop, async_client)

    async def aclose(self) -> None:
        """Close the async client of the running loop."""
        loop = asyncio.get_running_loop()
        client = self._async_clients.pop(loop, None)
        if client is not None:
            await _aclose_client(client)

    # -- the failure policy ---------------------------------------------------

    def run(self, operation: Callable[[Any], T], default: T) -> T:
        """Run ``operation(client)``; on an outage or an open breaker return ``default``."""
        if self._skip():
            return default
        try:
            client = self.client
        except Exception as exc:
            self._on_setup_failure(exc)
            return default
        try:
            result = operation(client)
        except Exception as exc:
            self._on_error(exc)
            return default
        self.breaker.record_success()
        return result

    async def arun(self, operation: Callable[[Any], Awaitable[T]], default: T) -> T:
        """The async form of :meth:`run`, on the loop's ``redis.asyncio`` client.

        On a short-lived loop (see :meth:`short_lived_loop`) the client is
        opened for this call and closed after it.
        """
        if self._skip():
            return default
        short_lived = self.short_lived_loop()
        try:
            client = _build_async_client(self.settings) if short_lived else self.async_client()
        except Exception as exc:
            self._on_setup_failure(exc)
            return default
        try:
            result = await operation(client)
        except Exception as exc:
            self._on_error(exc)
            return default
        finally:
            if short_lived:
                await _aclose_client(client)
        self.breaker.record_success()
        return result

    def run_script(
        self, script: LuaScript, keys: Sequence[KeyT], args: Sequence[ArgT], default: T
    ) -> Any | T:
        """Run a Lua script with ``EVALSHA`` (loading it on ``NOSCRIPT``)."""
        return self.run(lambda client: script.run(client, keys, args), default)

    async def arun_script(
        self, script: LuaScript, keys: Sequence[KeyT], args: Sequence[ArgT], default: T
    ) -> Any | T:
        """The async form of :meth:`run_script`.

        On a short-lived loop (an async view under WSGI) the sync client runs the
        script instead: the loop serves this one request, so blocking it for one
        round trip costs nothing, and the sync client's pooled connection saves
        a connect per call.
        """
        if self.short_lived_loop():
            return self.run_script(script, keys, args, default)
        return await self.arun(lambda client: script.arun(client, keys, args), default)

    def ping(self) -> bool:
        """Is Redis reachable now? (Goes through the breaker like every call.)"""
        return bool(self.run(lambda client: client.ping(), False))

    async def aping(self) -> bool:
        """The async form of :meth:`ping`."""
        return bool(await self.arun(lambda client: client.ping(), False))

    def _skip(self) -> bool:
        """No Redis configured, or the breaker is open: answer with the default at once."""
        if not self.configured:
            return True
        if not self.breaker.allow():
            self._count_failure(None, skipped=True)
            return True
        return False

    def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, ResponseError):
            # Redis answered, so it is up: a bug in a command or script. Logged
            # and reported, never raised into the site.
            self._on_bad_reply(exc)
        elif isinstance(exc, _FAILURES):
            # Refused, timed out, or answered with something that is not Redis
            # (a protocol error): all the same to the caller.
            self._on_outage(exc)
        else:
            self._on_unexpected(exc)

    def _count_failure(self, exc: BaseException | None, skipped: bool) -> None:
        self.failures += 1
        record = current_record()
        if record is not None:
            record.redis_failures += 1
        if not skipped:
            logger.debug("perfkit: Redis call failed: %r", exc)

    def _on_outage(self, exc: BaseException) -> None:
        self._count_failure(exc, skipped=False)
        self.breaker.record_failure(exc)
        if isinstance(exc, RedisClusterException):
            # A cluster client that never reached its startup nodes is useless;
            # build a new one on the next try.
            self._client = None

    def _on_setup_failure(self, exc: BaseException) -> None:
        # A client that cannot even be built (a cluster that never answered at
        # start-up, a cache alias that went away): an outage like any other.
        if isinstance(exc, OUTAGE_ERRORS):
            self._on_outage(exc)
            return
        self._count_failure(exc, skipped=False)
        self.breaker.record_failure(exc)
        logger.error("perfkit: cannot build the Redis client: %r", exc)

    def _on_unexpected(self, exc: Exception) -> None:
        # Not a Redis error at all (a bug, or the event loop shutting down):
        # logged with its traceback, counted, and never raised into the site.
        self._count_failure(exc, skipped=False)
        logger.exception("perfkit: unexpected error in a Redis call")
        record = current_record()
        if record is not None:
            record.errors.append(f"redis: {type(exc).__name__}: {exc}")

    def _on_bad_reply(self, exc: ResponseError) -> None:
        self.breaker.record_success()
        logger.error("perfkit: Redis rejected a perfkit command: %s", exc)
        record = current_record()
        if record is not None:
            record.errors.append(f"redis: {exc}")


_closing: set[asyncio.Task[None]] = set()


def _schedule_close(loop: asyncio.AbstractEventLoop, client: Any) -> None:
    task = loop.create_task(_aclose_client(client))
    _closing.add(task)  # keep a reference until it is done
    task.add_done_callback(_closing.discard)


async def _aclose_client(client: Any) -> None:
    await client.aclose()
    pool = getattr(client, "connection_pool", None)  # a cluster client has none
    if pool is not None:
        # A pool passed in explicitly is not closed by the client.
        await pool.disconnect()
        # A Sentinel-managed pool also holds connections to the Sentinels.
        for sentinel in getattr(getattr(pool, "sentinel_manager", None), "sentinels", ()):
            await sentinel.aclose()


# -- building clients -------------------------------------------------------------


def _timeouts(settings: PerfkitSettings, for_async: bool = False) -> dict[str, Any]:
    from redis.backoff import NoBackoff

    if for_async:
        from redis.asyncio.retry import Retry as AsyncRetry

        no_retry: Any = AsyncRetry(NoBackoff(), 0)
    else:
        from redis.retry import Retry

        no_retry = Retry(NoBackoff(), 0)
    return {
        "socket_timeout": settings.redis_timeout,
        "socket_connect_timeout": settings.redis_connect_timeout,
        # One attempt: the breaker, not a retry loop, decides what happens next.
        # redis-py's default retries a failed call with backoff (10 times in
        # redis-py 8): against a stopped server that is seconds per call.
        "retry_on_timeout": False,
        "retry": no_retry,
    }


def _build_sync_client(settings: PerfkitSettings) -> Any:
    client = _build_plain_or_cluster_client(settings)
    if type(client) is redis.Redis:
        # What command() reads to poll for its replies (REDIS_SPIN): on
        # perfkit's own client only, never on one a project passes in.
        client.perfkit_spin = ReplySpin(settings.redis_spin)  # type: ignore[attr-defined]
    return client


def _build_plain_or_cluster_client(settings: PerfkitSettings) -> Any:
    if settings.redis_url is not None:
        if settings.redis_cluster:
            from redis.cluster import RedisCluster

            return RedisCluster.from_url(settings.redis_url, **_timeouts(settings))
        return redis.Redis.from_url(settings.redis_url, **_timeouts(settings))
    if settings.redis_cache_alias is None:
        raise RedisNotConfigured("perfkit has no Redis configured")
    pool = _cache_pool(settings.redis_cache_alias)
    kwargs = dict(pool.connection_kwargs)
    kwargs.update(_timeouts(settings))

    from redis.sentinel import SentinelConnectionPool

    if isinstance(pool, SentinelConnectionPool):
        kwargs.pop("connection_pool", None)
        new_pool: redis.ConnectionPool = SentinelConnectionPool(  # type: ignore[no-untyped-call]
            pool.service_name,
            pool.sentinel_manager,
            connection_class=pool.connection_class,
            is_master=pool.is_master,
            **kwargs,
        )
    else:
        new_pool = redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
    return redis.Redis(connection_pool=new_pool)


def is_django_redis_alias(alias: str) -> bool:
    """Is ``CACHES[alias]`` a django-redis cache (or a subclass of one)?"""
    from django.conf import settings

    config = getattr(settings, "CACHES", {}).get(alias)
    return config is not None and is_django_redis_backend(config.get("BACKEND"))


def is_django_redis_backend(backend: Any) -> bool:
    if not isinstance(backend, str):
        return False
    if backend == "django_redis.cache.RedisCache":
        return True
    from django.utils.module_loading import import_string
    from django_redis.cache import RedisCache

    try:
        cls = import_string(backend)
    except ImportError:
        return False
    return isinstance(cls, type) and issubclass(cls, RedisCache)


def _cache_pool(alias: str) -> Any:
    """The connection pool of a django-redis cache (the primary, for writes)."""
    from django_redis import get_redis_connection

    return get_redis_connection(alias, write=True).connection_pool


_ASYNC_CONNECTION_CLASSES = {
    redis.Connection: redis.asyncio.Connection,
    redis.SSLConnection: redis.asyncio.SSLConnection,
    redis.UnixDomainSocketConnection: redis.asyncio.UnixDomainSocketConnection,
}


# The connection settings that mean the same to redis.asyncio as to sync redis-py.
# Anything else in a sync pool's kwargs (retry objects, parsers, maintenance
# notification handlers) is specific to the sync client and is left out.
_PORTABLE_KWARGS = frozenset(
    {
        "host",
        "port",
        "db",
        "username",
        "password",
        "path",
        "client_name",
        "socket_keepalive",
        "socket_keepalive_options",
        "health_check_interval",
        "encoding",
        "encoding_errors",
        "decode_responses",
        "protocol",
        "credential_provider",
        "ssl_keyfile",
        "ssl_certfile",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_data",
        "ssl_check_hostname",
        "ssl_min_version",
        "ssl_ciphers",
    }
)


def _portable(kwargs: dict[str, Any], settings: PerfkitSettings) -> dict[str, Any]:
    portable = {k: v for k, v in kwargs.items() if k in _PORTABLE_KWARGS}
    portable.update(_timeouts(settings, for_async=True))
    return portable


def _build_async_client(settings: PerfkitSettings) -> Any:
    if settings.redis_url is not None:
        if settings.redis_cluster:
            from redis.asyncio.cluster import RedisCluster

            timeouts = _timeouts(settings, for_async=True)
            del timeouts["retry_on_timeout"]  # not an option of the async cluster client
            return RedisCluster.from_url(settings.redis_url, **timeouts)
        return redis.asyncio.Redis.from_url(
            settings.redis_url, **_timeouts(settings, for_async=True)
        )
    if settings.redis_cache_alias is None:
        raise RedisNotConfigured("perfkit has no Redis configured")
    pool = _cache_pool(settings.redis_cache_alias)
    kwargs = _portable(pool.connection_kwargs, settings)

    from redis.sentinel import SentinelConnectionPool

    if isinstance(pool, SentinelConnectionPool):
        from redis.asyncio.sentinel import Sentinel

        sentinels = [
            (
                s.connection_pool.connection_kwargs.get("host"),
                s.connection_pool.connection_kwargs.get("port"),
            )
            for s in pool.sentinel_manager.sentinels
        ]
        sentinel = Sentinel(sentinels, **_timeouts(settings, for_async=True))  # type: ignore[no-untyped-call]
        return sentinel.master_for(pool.service_name, **kwargs)
    async_class = _ASYNC_CONNECTION_CLASSES.get(pool.connection_class, redis.asyncio.Connection)
    return redis.asyncio.Redis(
        connection_pool=redis.asyncio.ConnectionPool(connection_class=async_class, **kwargs)
    )


# -- the process-wide gateway --------------------------------------------------------

_gateway: RedisGateway | None = None
_gateway_lock = threading.Lock()


def get_gateway() -> RedisGateway:
    """The gateway for the current settings (built on first use, once per process)."""
    gateway = _gateway
    if gateway is None or gateway.settings is not get_settings():
        with _gateway_lock:
            gateway = _gateway
            if gateway is None or gateway.settings is not get_settings():
                gateway = _set_gateway(RedisGateway(get_settings()))
    return gateway


def _set_gateway(gateway: RedisGateway | None) -> RedisGateway:
    global _gateway
    old, _gateway = _gateway, gateway
    if old is not None and old is not gateway:
        old.close()
    return gateway  # type: ignore[return-value]


def reset_gateway() -> None:
    """Forget the gateway; the next :func:`get_gateway` builds one from the settings."""
    with _gateway_lock:
        _set_gateway(None)
