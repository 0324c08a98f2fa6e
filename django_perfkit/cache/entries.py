"""Reading and storing cache entries: three Lua scripts and the single-flight protocol.

An entry is one Redis string::

    <n>\\n<token key>\\n<token value>\\n ... <expiry ms> <compute µs>\\n<payload>

(the payload: :mod:`.codec`).

``READ`` returns the part after the tokens only if every token still has the
recorded value, so a hit is one round trip, and a stale entry is never returned.

A miss goes: ``CAPTURE`` (read the tokens the result will depend on and try to
take the entry's lock) -> run the query -> ``STORE`` (write the entry with the
captured token values, unless one of them moved meanwhile, and release the
lock). Capturing before the query is what closes the read/compute/store race:
a write that commits after the query read its rows bumps a token after the
capture, so ``STORE`` refuses the stale result, or the stored entry stops
matching as soon as the bump lands; the bump lands before the writer's
``save()`` returns.

Single flight: the miss that takes the lock computes; the others poll ``READ``
(2 ms, doubling, up to 50 ms apart) for ``LOCK_WAIT`` seconds, then query the
database themselves. Early refresh (XFetch): a hit whose entry is close to
expiry, with probability growing as expiry nears and with the query's cost,
is recomputed by one caller while the others keep getting the cached result.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from django_perfkit.cache import codec
from django_perfkit.cache.analysis import Plan
from django_perfkit.conf import CacheSettings
from django_perfkit.record import current_record
from django_perfkit.redis import LuaScript, get_gateway
from django_perfkit.versions.tokens import init_seed
from django_perfkit.versions.writes import reading

logger = logging.getLogger("django_perfkit.cache")

READ = LuaScript(
    """
local v = redis.call('GET', KEYS[1])
if not v then return false end
local nl = string.find(v, '\\n', 1, true)
local n = tonumber(string.sub(v, 1, nl - 1))
local pos = nl + 1
for i = 1, n do
  local e1 = string.find(v, '\\n', pos, true)
  local e2 = string.find(v, '\\n', e1 + 1, true)
  if redis.call('GET', string.sub(v, pos, e1 - 1)) ~= string.sub(v, e1 + 1, e2 - 1) then
    return false
  end
  pos = e2 + 1
end
return string.sub(v, pos)
""",
    name="cache.read",
)

#: KEYS: lock, tokens...; ARGV: lock owner ('' = do not lock), lock ms.
#: Returns {1 if locked here else 0, value or '' per token}.
CAPTURE = LuaScript(
    """
local out = {0}
if ARGV[1] ~= '' then
  if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', tonumber(ARGV[2])) then out[1] = 1 end
end
for i = 2, #KEYS do
  out[i] = redis.call('GET', KEYS[i]) or ''
end
return out
""",
    name="cache.capture",
)

#: KEYS: entry, lock, n captured tokens, then row tokens.
#: ARGV: n, entry ms, token ms, seed, lock owner, body, flags, n captured values.
STORE = LuaScript(
    """
local n = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local tokttl = tonumber(ARGV[3])
local seed = ARGV[4]
local flags = ARGV[7]
local parts = {}
local ok = 1
for i = 1, n do
  local k = KEYS[2 + i]
  local cur = redis.call('GET', k)
  local expected = ARGV[7 + i]
  if expected == '' then
    if cur then ok = 0 break end
    cur = seed .. i
    redis.call('SET', k, cur, 'PX', tokttl)
  elseif cur ~= expected then
    ok = 0 break
  elseif redis.call('PTTL', k) < tokttl then
    redis.call('PEXPIRE', k, tokttl)
  end
  if string.sub(flags, i, i) == '1' then
    parts[#parts + 1] = k
    parts[#parts + 1] = cur
  end
end
if ok == 1 then
  for j = 3 + n, #KEYS do
    local k = KEYS[j]
    local cur = redis.call('GET', k)
    if not cur then
      cur = seed .. j
      redis.call('SET', k, cur, 'PX', tokttl)
    elseif redis.call('PTTL', k) < tokttl then
      redis.call('PEXPIRE', k, tokttl)
    end
    parts[#parts + 1] = k
    parts[#parts + 1] = cur
  end
  local header = (#parts / 2) .. '\\n'
  if #parts > 0 then header = header .. table.concat(parts, '\\n') .. '\\n' end
  redis.call('SET', KEYS[1], header .. ARGV[6], 'PX', ttl)
end
if ARGV[5] ~= '' and redis.call('GET', KEYS[2]) == ARGV[5] then
  redis.call('DEL', KEYS[2])
end
return ok
""",
    name="cache.store",
)

_MISSING = object()
_POLL_FIRST = 0.002
_POLL_MAX = 0.05


@dataclass(slots=True)
class Lookup:
    """One cached evaluation: where its entry lives and how to plan its dependencies."""

    alias: str
    entry: str
    lock: str
    timeout: float
    kind: str
    settings: CacheSettings
    make_plan: Callable[[], Plan | None]


def _stats_add(hit: bool | None, seconds: float, skipped: bool = False) -> None:
    record = current_record()
    if record is None:
        return
    stats = record.cache
    if hit is True:
        stats.hits += 1
    elif hit is False:
        stats.misses += 1
    if skipped:
        stats.skipped += 1
    stats.time += seconds


def _decode(raw: bytes, beta: float) -> tuple[Any, bool]:
    """``(value, refresh_now)``; ``value`` is ``_MISSING`` when the payload is unreadable."""
    newline = raw.find(b"\n")
    try:
        expiry_ms, compute_us = raw[:newline].split(b" ")
        value = codec.loads(raw[newline + 1 :])
    except Exception:  # a model that changed shape, a truncated value
        logger.warning("perfkit: unreadable cache entry; recomputing", exc_info=True)
        return _MISSING, False
    refresh = False
    if beta > 0:
        # XFetch: now - delta * beta * ln(rand) >= expiry (Vattani et al. 2015)
        delta = int(compute_us) / 1_000_000
        gap = -delta * beta * math.log(random.random() or 1e-12)
        refresh = time.time() + gap >= int(expiry_ms) / 1000.0
    return value, refresh


def _encode(value: Any, lookup: Lookup, compute_seconds: float) -> bytes | None:
    try:
        payload = codec.dumps(value)
    except Exception as exc:
        logger.warning("perfkit: result of %s cannot be pickled, not cached: %r", lookup.kind, exc)
        return None
    if len(payload) > lookup.settings.max_bytes:
        return None
    expiry_ms = int((time.time() + lookup.timeout) * 1000)
    return b"%d %d\n" % (expiry_ms, int(compute_seconds * 1_000_000)) + payload


def _store_args(
    lookup: Lookup, plan: Plan, captured: list[Any], owner: str, value: Any, body: bytes
) -> tuple[list[str], list[Any]]:
    flags, row_keys = plan.flags(lookup.kind, value)
    ttl_ms = max(1, int(lookup.timeout * 1000))
    token_ms = max(lookup.settings.token_ttl * 1000, 2 * ttl_ms)
    keys = [lookup.entry, lookup.lock, *plan.static, *row_keys]
    args: list[Any] = [len(plan.static), ttl_ms, token_ms, init_seed(), owner, body, flags]
    args.extend(captured)
    return keys, args


def _storable(plan: Plan, read_tables: set[str]) -> bool:
    # A table the plan did not foresee (a subquery in an annotation, a custom
    # prefetch), or a write during the computation: the captured tokens do not
    # cover what the result depends on, so it is not stored.
    return "*" not in read_tables and read_tables <= plan.tables


def get(lookup: Lookup, compute: Callable[[], Any]) -> Any:
    """The cached result of ``compute``, or its fresh result (stored when it may be)."""
    gateway = get_gateway()
    started = time.perf_counter()
    raw = gateway.run_script(READ, [lookup.entry], [], None)
    cached: Any = _MISSING
    if raw is not None:
        cached, refresh = _decode(raw, lookup.settings.early_refresh_beta)
        if cached is not _MISSING and not refresh:
            _stats_add(True, time.perf_counter() - started)
            return cached
    plan = lookup.make_plan()
    if plan is None:
        _stats_add(False, time.perf_counter() - started, skipped=True)
        return compute()
    owner = secrets.token_hex(8)
    lock_ms = int(lookup.settings.lock_timeout * 1000)
    reply = gateway.run_script(CAPTURE, [lookup.lock, *plan.static], [owner, lock_ms], None)
    if reply is None:  # Redis is not answering: the database it is
        _stats_add(False, time.perf_counter() - started)
        return cached if cached is not _MISSING else compute()
    locked = reply[0] == 1
    captured = reply[1:]
    if not locked:
        if cached is not _MISSING:
            # Someone else is refreshing early: the current entry is still valid.
            _stats_add(True, time.perf_counter() - started)
            return cached
        deadline = time.monotonic() + lookup.settings.lock_wait
        delay = _POLL_FIRST
        while time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)
            raw = gateway.run_script(READ, [lookup.entry], [], None)
            if raw is not None:
                value, _refresh = _decode(raw, 0.0)
                if value is not _MISSING:
                    _stats_add(True, time.perf_counter() - started)
                    return value
        owner = ""
    cache_seconds = time.perf_counter() - started
    read_tables: set[str] = set()
    token = reading.set(read_tables)
    computed_at = time.perf_counter()
    try:
        value = compute()
    except BaseException:
        if owner:
            gateway.run(lambda client: client.delete(lookup.lock), None)
        raise
    finally:
        reading.reset(token)
    compute_seconds = time.perf_counter() - computed_at
    store_started = time.perf_counter()
    stored = _store(gateway, lookup, plan, captured, owner, value, compute_seconds, read_tables)
    _stats_add(False, cache_seconds + time.perf_counter() - store_started, skipped=not stored)
    return value


def _store(
    gateway: Any,
    lookup: Lookup,
    plan: Plan,
    captured: list[Any],
    owner: str,
    value: Any,
    compute_seconds: float,
    read_tables: set[str],
) -> bool:
    body = _encode(value, lookup, compute_seconds) if _storable(plan, read_tables) else None
    if body is None:
        if owner:
            gateway.run(lambda client: client.delete(lookup.lock), None)
        return False
    keys, args = _store_args(lookup, plan, captured, owner, value, body)
    return bool(gateway.run_script(STORE, keys, args, None))


async def aget(lookup: Lookup, compute: Callable[[], Awaitable[Any]]) -> Any:
    """The async form of :func:`get`: Redis through ``redis.asyncio``; ``compute`` awaited."""
    gateway = get_gateway()
    started = time.perf_counter()
    raw = await gateway.arun_script(READ, [lookup.entry], [], None)
    cached: Any = _MISSING
    if raw is not None:
        cached, refresh = _decode(raw, lookup.settings.early_refresh_beta)
        if cached is not _MISSING and not refresh:
            _stats_add(True, time.perf_counter() - started)
            return cached
    plan = lookup.make_plan()
    if plan is None:
        _stats_add(False, time.perf_counter() - started, skipped=True)
        return await compute()
    owner = secrets.token_hex(8)
    lock_ms = int(lookup.settings.lock_timeout * 1000)
    reply = await gateway.arun_script(CAPTURE, [lookup.lock, *plan.static], [owner, lock_ms], None)
    if reply is None:
        _stats_add(False, time.perf_counter() - started)
        return cached if cached is not _MISSING else await compute()
    locked = reply[0] == 1
    captured = reply[1:]
    if not locked:
        if cached is not _MISSING:
            _stats_add(True, time.perf_counter() - started)
            return cached
        deadline = time.monotonic() + lookup.settings.lock_wait
        delay = _POLL_FIRST
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)
            raw = await gateway.arun_script(READ, [lookup.entry], [], None)
            if raw is not None:
                value, _refresh = _decode(raw, 0.0)
                if value is not _MISSING:
                    _stats_add(True, time.perf_counter() - started)
                    return value
        owner = ""
    cache_seconds = time.perf_counter() - started
    read_tables: set[str] = set()
    token = reading.set(read_tables)
    computed_at = time.perf_counter()
    try:
        value = await compute()
    except BaseException:
        if owner:
            await gateway.arun(lambda client: client.delete(lookup.lock), None)
        raise
    finally:
        reading.reset(token)
    compute_seconds = time.perf_counter() - computed_at
    store_started = time.perf_counter()
    body = _encode(value, lookup, compute_seconds) if _storable(plan, read_tables) else None
    if body is None:
        if owner:
            await gateway.arun(lambda client: client.delete(lookup.lock), None)
        stored = False
    else:
        keys, args = _store_args(lookup, plan, captured, owner, value, body)
        stored = bool(await gateway.arun_script(STORE, keys, args, None))
    _stats_add(False, cache_seconds + time.perf_counter() - store_started, skipped=not stored)
    return value
