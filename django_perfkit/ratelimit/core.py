"""The check: a :class:`Limit` (validated once) evaluated against a request.

A limit is built and validated when it is declared (decorator, route rule,
function call); evaluating it on a request never raises for bad configuration.
The check itself is one ``EVALSHA`` through the Redis gateway. When Redis is
down, slow or black-holed the gateway gives up within its timeout (or at once,
with the breaker open) and the limit's ``fail`` policy decides: ``"open"``
lets the request through, ``"closed"`` limits it.
"""

from __future__ import annotations

import functools
import hashlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict

from django.http import HttpRequest
from django.utils.module_loading import import_string
from django_ratelimit import ALL, UNSAFE

from django_perfkit.conf import RATELIMIT_ALGORITHMS, RATELIMIT_FAIL_MODES, get_settings
from django_perfkit.ratelimit.keys import InvalidKey, KeyFunc, bounded, resolve_key
from django_perfkit.ratelimit.rates import InvalidRate, parse_rate
from django_perfkit.ratelimit.scripts import SCRIPTS
from django_perfkit.record import RatelimitDecision, current_record
from django_perfkit.redis import get_gateway
from django_perfkit.users import aload_user

__all__ = ["ALL", "UNSAFE", "InvalidLimit", "Limit", "Usage"]


class Usage(TypedDict):
    """django-ratelimit's usage dict (``count``, ``limit``, ``should_limit``,
    ``time_left``), plus what the headers need."""

    count: int
    limit: int
    should_limit: bool
    time_left: int  # seconds until the client may try again (0 when allowed)
    remaining: int
    reset: int  # seconds until the quota is fully back
    period: int
    group: str
    algorithm: str
    #: True when Redis could not be asked and the fail policy decided.
    failed: bool


class InvalidLimit(ValueError):
    pass


_FAILED = object()
RateSpec = str | tuple[int, int] | Callable[[str, HttpRequest], Any] | None


def _methods(method: Any) -> tuple[str, ...] | None:
    if method is ALL or method is None:
        return None
    if isinstance(method, str):
        return (method.upper(),)
    if isinstance(method, (list, tuple)) and all(isinstance(m, str) for m in method):
        return tuple(m.upper() for m in method)
    raise InvalidLimit(f"method {method!r} must be a string, a list of strings, ALL or UNSAFE")


def _qualname(func: Any) -> str:
    return f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', repr(func))}"


_KEY_ALGORITHM = {"sliding": "sliding/10"}


@functools.lru_cache(maxsize=8192)
def _digest(
    group: str, key_spec: str, count: int, period: int, methods: tuple[str, ...] | None,
    algorithm: str, value: str,
) -> str:  # fmt: skip
    """The key's tag: one per (limit, client), cached since clients come back.

    A digest keeps keys short whatever the group or key value, and puts the
    rate in the key (as django-ratelimit does): changing a rate starts afresh.
    """
    methods_text = ",".join(methods) if methods else "*"
    # "sliding/10": the sliding window's counts per tenth. Keys of the earlier
    # two-window counter (a hash of other fields) are left to expire instead
    # of being read as tenths.
    algorithm = _KEY_ALGORITHM.get(algorithm, algorithm)
    digest = hashlib.sha256(
        f"{group}\0{key_spec}\0{count}/{period}\0{methods_text}\0{algorithm}\0{value}".encode(
            "utf-8", "replace"
        )
    ).hexdigest()[:32]
    return digest


@dataclass(frozen=True, slots=True)
class Limit:
    group: str
    key: KeyFunc
    rate: RateSpec
    methods: tuple[str, ...] | None
    algorithm: str | None  # None: PERFKIT["RATELIMIT_ALGORITHM"]
    cost: int
    fail: str | None  # None: PERFKIT["RATELIMIT_FAIL"]
    #: ``(count, seconds)`` parsed once, when the rate is not a callable.
    parsed: tuple[int, int] | None = None
    #: The key or rate may read ``request.user``, which async code must load first.
    needs_user: bool = True
    #: What the key is (``"ip"``, ``"post:username"``, a callable's path): part of
    #: the Redis key, so two limits of one group with different key types never
    #: share a bucket (a username that looks like an IP address cannot use up
    #: that IP's budget).
    key_spec: str = ""

    @classmethod
    def build(
        cls,
        group: str,
        key: Any,
        rate: Any,
        method: Any = ALL,
        algorithm: str | None = None,
        cost: Any = 1,
        fail: str | None = None,
    ) -> Limit:
        """Validate everything that can be validated now; raises :class:`InvalidLimit`."""
        # django-ratelimit requires a key; perfkit defaults to the user, else the IP.
        key = "user_or_ip" if key is None else key
        try:
            key_func = resolve_key(key)
        except InvalidKey as exc:
            raise InvalidLimit(str(exc)) from exc
        if isinstance(rate, str) and "/" not in rate and "." in rate:
            # A dotted path to a rate function, as django-ratelimit accepts.
            try:
                rate = import_string(rate)
            except ImportError as exc:
                raise InvalidLimit(f"rate {rate!r} cannot be imported: {exc}") from exc
        parsed = None
        if rate is not None and not callable(rate):
            try:
                parsed = parse_rate(rate)
            except InvalidRate as exc:
                raise InvalidLimit(str(exc)) from exc
        if algorithm is not None and algorithm not in RATELIMIT_ALGORITHMS:
            raise InvalidLimit(
                f"algorithm {algorithm!r} is unknown; use one of {', '.join(RATELIMIT_ALGORITHMS)}"
            )
        if fail is not None and fail not in RATELIMIT_FAIL_MODES:
            raise InvalidLimit(f"fail {fail!r} is unknown; use 'open' or 'closed'")
        if isinstance(cost, bool) or not isinstance(cost, int) or cost < 0:
            raise InvalidLimit(f"cost {cost!r} must be a whole number >= 0")
        if parsed is not None and parsed[0] > 0 and cost > parsed[0]:
            raise InvalidLimit(f"cost {cost} is more than the whole limit ({parsed[0]})")
        reads_request_only = isinstance(key, str) and (
            key == "ip" or key.partition(":")[0] in ("header", "get", "post")
        )
        key_spec = key if isinstance(key, str) else _qualname(key)
        return cls(
            group, key_func, rate, _methods(method), algorithm, cost, fail, parsed,
            needs_user=not reads_request_only or callable(rate), key_spec=key_spec,
        )  # fmt: skip

    # -- evaluation ------------------------------------------------------------

    def _prepare(
        self, request: HttpRequest, increment: bool
    ) -> tuple[Any, list[str], list[Any], int, int, str, str] | None:
        """What to send to Redis, or None when this limit does not apply."""
        settings = get_settings()
        if not settings.ratelimit_enable:  # PERFKIT's or django-ratelimit's switch
            return None
        if self.methods is not None and request.method not in self.methods:
            return None
        if self.parsed is not None:
            count, period = self.parsed
        else:
            rate = self.rate(self.group, request) if callable(self.rate) else self.rate
            if rate is None:
                return None
            try:
                count, period = parse_rate(rate)
            except InvalidRate:
                return None  # a rate callable returned garbage: no limit rather than a 500
        value = bounded(self.key(self.group, request))
        algorithm = self.algorithm or settings.ratelimit_algorithm
        gateway = get_gateway()
        digest = _digest(self.group, self.key_spec, count, period, self.methods, algorithm, value)
        keys = [gateway.key("rl", digest)]
        packed = f"{count} {period} {self.cost} {1 if increment else 0}"
        if algorithm == "fixed":
            packed += f" {zlib.crc32(str(value).encode('utf-8', 'replace')) % period}"
        args: list[Any] = [packed]
        return SCRIPTS[algorithm], keys, args, count, period, algorithm, value

    def _usage(
        self, reply: Any, count: int, period: int, algorithm: str, record: Any = None
    ) -> Usage:
        """The usage dict from the script's reply (``record``: the request record,
        found before the round trip, when the caller has it)."""
        # bytes, or str from a client configured with decode_responses=True
        fields = reply.split() if isinstance(reply, (bytes, str)) else ()
        usage: Usage
        if len(fields) != 5:
            closed = (self.fail or get_settings().ratelimit_fail) == "closed"
            retry = max(1, int(get_gateway().breaker.cooldown)) if closed else 0
            usage = {
                "count": 0, "limit": count, "should_limit": closed, "time_left": retry,
                "remaining": 0 if closed else count, "reset": retry, "period": period,
                "group": self.group, "algorithm": algorithm, "failed": True,
            }  # fmt: skip
        else:
            allowed, used, remaining, retry_ms, reset_ms = map(int, fields)
            reset = -(-reset_ms // 1000)
            # A dict display, not Usage(...): the same dict, built without
            # keyword arguments, on a path run per check.
            usage = {
                "count": used, "limit": count, "should_limit": not allowed,
                # As django-ratelimit: seconds until the window frees up; when
                # limited, until the next request can pass.
                "time_left": -(-retry_ms // 1000) if not allowed else reset,
                "remaining": remaining, "reset": reset, "period": period,
                "group": self.group, "algorithm": algorithm, "failed": False,
            }  # fmt: skip
        if record is None:
            record = current_record()
        if record is not None:
            record.ratelimits.append(
                RatelimitDecision(
                    self.group,
                    usage["should_limit"],
                    count,
                    usage["remaining"],
                    algorithm,
                    usage["failed"],
                )
            )
        return usage

    def _zero(self, period: int, algorithm: str) -> Usage:
        # "0/s" blocks everything, as in django-ratelimit; no need to ask Redis.
        reply = f"0 {self.cost} 0 {period * 1000} {period * 1000}".encode()
        return self._usage(reply, 0, period, algorithm)

    def usage(self, request: HttpRequest, increment: bool = True) -> Usage | None:
        """Check (and, with ``increment``, count) this request; None if no limit applies."""
        prepared = self._prepare(request, increment)
        if prepared is None:
            return None
        script, keys, args, count, period, algorithm, _ = prepared
        if count == 0:
            return self._zero(period, algorithm)
        # Looked up before the round trip: after it, every line runs with the
        # CPU's caches cold (the process slept while Redis answered).
        record = current_record()
        reply = get_gateway().run_script(script, keys, args, _FAILED)
        return self._usage(reply, count, period, algorithm, record)

    async def ausage(self, request: HttpRequest, increment: bool = True) -> Usage | None:
        """:meth:`usage` on the gateway's ``redis.asyncio`` client (no thread hop)."""
        if self.needs_user and get_settings().ratelimit_enable:
            await aload_user(request)
        prepared = self._prepare(request, increment)
        if prepared is None:
            return None
        script, keys, args, count, period, algorithm, _ = prepared
        if count == 0:
            return self._zero(period, algorithm)
        reply = await get_gateway().arun_script(script, keys, args, _FAILED)
        return self._usage(reply, count, period, algorithm)

    def reset(self, request: HttpRequest) -> bool:
        """Forget this client's count for this limit. True if there was one."""
        prepared = self._prepare(request, increment=False)
        if prepared is None:
            return False
        keys = prepared[1]
        return bool(get_gateway().run(lambda client: client.delete(*keys), 0))
