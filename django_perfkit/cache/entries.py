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
(2 ms, doubling, up to 50 ms apart) until the entry is there, for at most
``LOCK_WAIT`` seconds, and query the database themselves if it does not come:
the wait ends early when the lock is released without an entry (a write
raced the computation and its result was refused).

Early refresh (XFetch): a hit whose entry is close to expiry, with probability
growing as expiry nears and with the query's cost, is recomputed by one caller
while the others keep getting the cached result.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Generator, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import SynchronousOnlyOperation

from django_perfkit.cache import codec
from django_perfkit.cache.analysis import Plan
from django_perfkit.conf import CacheSettings
from django_perfkit.record import current_record
from django_perfkit.redis import LuaScript, get_gateway
from django_perfkit.redis.scripts import command
from django_perfkit.versions.tokens import init_seed
from django_perfkit.versions.writes import reading

logger = logging.getLogger("django_perfkit.cache")

#: Lua: the payload of the entry stored at ``key`` if all its tokens still match,
#: else nil; then the whole stored value.
_VALID = """
local function valid(key)
  local v = redis.call('GET', key)
  if not v then return nil end
  local nl = string.find(v, '\\n', 1, true)
  local n = tonumber(string.sub(v, 1, nl - 1))
  local pos = nl + 1
  for i = 1, n do
    local e1 = string.find(v, '\\n', pos, true)
    local e2 = string.find(v, '\\n', e1 + 1, true)
    if redis.call('GET', string.sub(v, pos, e1 - 1)) ~= string.sub(v, e1 + 1, e2 - 1) then
      return nil
    end
    pos = e2 + 1
  end
  return string.sub(v, pos), v
end
"""

#: KEYS: entry [, lock]; ARGV: ["whole"]. The entry's payload if every token
#: matches (given "whole": the stored value, header included, for an enclosing
#: entry to depend on the same tokens); else, given the lock, 1 while someone
#: holds it and 0 when nobody does.
READ = LuaScript(
    _VALID
    + """
local payload, whole = valid(KEYS[1])
if payload then
  if ARGV[1] == 'whole' then return whole end
  return payload
end
if KEYS[2] then return redis.call('EXISTS', KEYS[2]) end
return false
""",
    name="cache.read",
)

#: KEYS: lock, entry, tokens...; ARGV: lock owner, lock ms, "refresh" or "" [, seed,
#: token ms: create the missing tokens now, for captures made before any store].
#: {2, payload} if a valid entry appeared since the read (another miss stored
#: it; not asked on an early refresh, whose entry is valid); else {1 if locked
#: here else 0, then the value or '' of each token}.
CAPTURE = LuaScript(
    _VALID
    + """
if ARGV[3] ~= 'refresh' then
  local payload = valid(KEYS[2])
  if payload then return {2, payload} end
end
local out = {0}
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', tonumber(ARGV[2])) then out[1] = 1 end
for i = 3, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if not v and ARGV[4] then
    v = ARGV[4] .. i
    redis.call('SET', KEYS[i], v, 'PX', tonumber(ARGV[5]))
  end
  out[i - 1] = v or ''
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
    poll=False,  # right after the query it stores: see LuaScript
)

#: KEYS: lock; ARGV: owner. Releases the lock only if this caller still holds it.
RELEASE = LuaScript(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""",
    name="cache.release",
)

MISSING = object()
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
    #: False when the result may come from an older snapshot: read, never store.
    store: bool = True
    #: Compute and store whatever is stored and whoever holds the lock (cache on
    #: write's recompute after a write: a holder may have computed before it).
    force: bool = False
    #: What to call the entry in a warning when its computation read more than
    #: its plan covers (a fragment's body); empty: not worth a warning.
    label: str = ""


def count_lookup(
    hit: bool | None, seconds: float, skipped: bool = False, recompute: bool = False
) -> None:
    record = current_record()
    if record is None:
        return
    stats = record.cache
    if recompute:
        stats.recomputes += 1
    elif hit is True:
        stats.hits += 1
    elif hit is False:
        stats.misses += 1
    if skipped:
        stats.skipped += 1
    stats.time += seconds


def decode(raw: bytes, beta: float) -> tuple[Any, bool]:
    """``(value, refresh_now)``; ``value`` is ``MISSING`` when the payload is unreadable."""
    newline = raw.find(b"\n")
    try:
        expiry_ms, compute_us = raw[:newline].split(b" ")
        value = codec.loads(raw[newline + 1 :])
    except Exception:  # a model that changed shape, a truncated value
        logger.warning("perfkit: unreadable cache entry; recomputing", exc_info=True)
        return MISSING, False
    refresh = False
    if beta > 0:
        # XFetch: now - delta * beta * ln(rand) >= expiry (Vattani et al. 2015).
        # -ln(rand) exceeds 40 with probability e**-40: farther from expiry
        # than that, no draw is needed.
        left = int(expiry_ms) / 1000.0 - time.time()
        delta = int(compute_us) / 1_000_000
        if left <= 40 * delta * beta:
            refresh = -delta * beta * math.log(random.random() or 1e-12) >= left
    return value, refresh


def encode(value: Any, lookup: Lookup, compute_seconds: float) -> bytes | None:
    try:
        payload = codec.dumps(value)
    except Exception as exc:
        logger.warning("perfkit: result of %s cannot be pickled, not cached: %r", lookup.kind, exc)
        return None
    if len(payload) > lookup.settings.max_bytes:
        return None
    expiry_ms = int((time.time() + lookup.timeout) * 1000)
    return b"%d %d\n" % (expiry_ms, int(compute_seconds * 1_000_000)) + payload


def store_args(
    lookup: Lookup,
    plan: Plan,
    captured: list[Any],
    owner: str,
    value: Any,
    body: bytes,
    read_tables: set[str] | None = None,
    inner: dict[str, Any] | None = None,
) -> tuple[list[str], list[Any]]:
    """STORE's keys and arguments. ``inner``: tokens the value depends on through
    entries it read (compared and recorded like the captured ones)."""
    flags, row_keys = plan.flags(lookup.kind, value, read_tables)
    ttl_ms = max(1, int(lookup.timeout * 1000))
    token_ms = _token_ms(lookup)
    static = list(plan.static)
    if inner:
        # An inner token this entry captured itself is compared against its own
        # (earlier) capture, and recorded whatever the plan's flag said: the
        # inner entry's value depends on it.
        flags = "".join(
            "1" if flag == "1" or key in inner else "0"
            for key, flag in zip(static, flags, strict=True)
        )
        own = set(static)
        extra = [(key, val) for key, val in inner.items() if key not in own]
        static += [key for key, _val in extra]
        flags += "1" * len(extra)
        captured = [*captured, *(val for _key, val in extra)]
        row_keys = [key for key in row_keys if key not in inner]
    keys = [lookup.entry, lookup.lock, *static, *row_keys]
    args: list[Any] = [len(static), ttl_ms, token_ms, init_seed(), owner, body, flags]
    args.extend(captured)
    return keys, args


def inner_storable(plan: Plan, inner: dict[str, Any], read_tables: set[str]) -> bool:
    """May an entry depending on ``inner`` (tokens of entries it read) be stored?

    Not when one of them is of another database alias (its tokens live in
    another hash slot: one STORE cannot compare them on Redis Cluster), nor
    when one has no value (it cannot be compared); ``read_tables`` then gets
    "*", so that an enclosing computation is not stored either.
    """
    base = plan.tokens.base
    if all(key.startswith(base) and value for key, value in inner.items()):
        return True
    read_tables.add("*")
    return False


def storable(plan: Plan, read_tables: set[str]) -> bool:
    # A table the plan did not foresee (a subquery in an annotation, a custom
    # prefetch), or a write during the computation: the captured tokens do not
    # cover what the result depends on, so it is not stored.
    return "*" not in read_tables and read_tables <= plan.tables


# -- the protocol, once, for both drivers ------------------------------------------------
#
# _protocol() is a generator that says what to do and gets the answers: ("script",
# script, keys, args) -> the reply (None on failure), ("sleep", seconds) -> None,
# ("plan",) -> the lookup's plan or None, ("compute",) -> the result (an exception
# from it is thrown back in). get() runs it with blocking calls, aget() with
# awaits; the logic is written once.

_Step = tuple[Any, ...]


#: _protocol()'s ``raw`` when the entry has not been read yet.
_UNREAD: Any = object()


def _protocol(
    lookup: Lookup, started: float | None = None, raw: Any = _UNREAD
) -> Generator[_Step, Any, Any]:
    """``raw``: READ's reply when the caller has read the entry already
    (:func:`get`'s hit path), with ``started`` the time it began."""
    if started is None:
        started = time.perf_counter()
    # Inside the computation of another entry (a fragment's body evaluating a
    # cached queryset, a cached function reading another): that entry depends
    # on the tokens this value is valid under, with the values they had when
    # it was read (see ``depending``).
    outer = depending.get()
    whole = ["whole"] if outer is not None else []
    if raw is _UNREAD:
        raw = None if lookup.force else (yield ("script", READ, [lookup.entry], whole))
    cached: Any = MISSING
    valid_under: list[tuple[str, bytes]] = []
    if raw is not None:
        if outer is not None:
            raw, valid_under = split_whole(raw)
        cached, refresh = decode(raw, lookup.settings.early_refresh_beta)
        if cached is not MISSING and not refresh:
            if outer is not None:
                depend(valid_under, outer)
            count_lookup(True, time.perf_counter() - started)
            return cached
    plan = (yield ("plan",)) if lookup.store else None
    if plan is None:
        # Computed in the enclosing context: what it reads counts as read there.
        count_lookup(False, time.perf_counter() - started, skipped=True)
        return (yield ("compute",))
    owner = secrets.token_hex(8)
    lock_ms = int(lookup.settings.lock_timeout * 1000)
    keys = [lookup.lock, lookup.entry, *plan.static]
    mode = "refresh" if cached is not MISSING or lookup.force else ""
    # Missing tokens are created now, not at STORE: an entry read or computed
    # inside this one's computation may create a token they share (the epoch,
    # a table's), and this one's "did not exist" capture would then refuse it;
    # and an enclosing entry depends on the values captured here.
    capture_args = [owner, lock_ms, mode, init_seed(), _token_ms(lookup)]
    reply = yield ("script", CAPTURE, keys, capture_args)
    if reply is None:  # Redis is not answering: the database it is
        count_lookup(False, time.perf_counter() - started, recompute=lookup.force)
        if cached is not MISSING:
            depend(valid_under, outer)
            return cached
        return (yield ("compute",))
    if reply[0] == 2:
        # Stored by another miss between our read and now (single flight's
        # last gap: that miss released its lock before we asked for it).
        value, _refresh = decode(reply[1], 0.0)
        if value is not MISSING:
            if outer is not None:
                unknown_dependency()  # its tokens are not in this reply
            count_lookup(True, time.perf_counter() - started)
            return value
        return (yield ("compute",))
    locked = reply[0] == 1
    captured = reply[1:]
    # Captured before the value below is read or computed: valid under these.
    captured_under = list(zip(plan.static, captured, strict=True))
    if not locked and lookup.force:
        owner = ""  # compute anyway; STORE refuses it if a later write moved a token
    elif not locked:
        if cached is not MISSING:
            # Someone else is refreshing early: the current entry is still valid.
            depend(valid_under, outer)
            count_lookup(True, time.perf_counter() - started)
            return cached
        deadline = time.monotonic() + lookup.settings.lock_wait
        delay = _POLL_FIRST
        while time.monotonic() < deadline:
            yield ("sleep", delay)
            delay = min(delay * 2, _POLL_MAX)
            raw = yield ("script", READ, [lookup.entry, lookup.lock], whole)
            if isinstance(raw, bytes):
                raw, polled_under = split_whole(raw) if outer is not None else (raw, [])
                value, _refresh = decode(raw, 0.0)
                if value is not MISSING:
                    depend(polled_under, outer)
                    count_lookup(True, time.perf_counter() - started)
                    return value
            if raw != 1:
                break  # the lock is gone with no entry (its result was not stored)
        owner = ""
    cache_seconds = time.perf_counter() - started
    read_tables: set[str] = set()
    inner: dict[str, Any] = {}
    token = reading.set(read_tables)
    inner_token = depending.set(inner)
    computed_at = time.perf_counter()
    try:
        value = yield ("compute",)
    except BaseException:
        if owner:
            yield ("script", RELEASE, [lookup.lock], [owner])
        raise
    finally:
        reading.reset(token)
        depending.reset(inner_token)
    compute_seconds = time.perf_counter() - computed_at
    store_started = time.perf_counter()
    covered = storable(plan, read_tables) and inner_storable(plan, inner, read_tables)
    if outer is not None:
        if covered:
            depend(captured_under, outer)
            depend(inner.items(), outer)
        else:
            unknown_dependency()
    if not covered and lookup.label:
        _not_covered(lookup.label, read_tables - plan.tables)
    body = encode(value, lookup, compute_seconds) if covered else None
    if body is None:
        if owner:
            yield ("script", RELEASE, [lookup.lock], [owner])
        stored = False
    else:
        keys, args = store_args(lookup, plan, captured, owner, value, body, read_tables, inner)
        reply = yield ("script", STORE, keys, args)
        stored = bool(reply)
        if reply is None and owner:
            # Redis did not answer (a large entry, a timeout): do not leave the
            # others waiting for a lock nobody will release.
            yield ("script", RELEASE, [lookup.lock], [owner])
    seconds = cache_seconds + time.perf_counter() - store_started
    count_lookup(False, seconds, skipped=not stored, recompute=lookup.force)
    return value


#: The tokens an entry being computed depends on through other entries it read
#: (token key -> the value it had when that entry was read or captured), or
#: None outside a computation. Its STORE compares them like its own captured
#: tokens and records them, so the entry stops matching when any of them moves.
depending: ContextVar[dict[str, Any] | None] = ContextVar("perfkit_depending", default=None)


def depend(pairs: Iterable[tuple[str, Any]], outer: dict[str, Any] | None = None) -> None:
    """The entry being computed (if any) depends on ``pairs``: (token, the value
    it had when the value read was valid)."""
    if outer is None:
        outer = depending.get()
    if outer is not None:
        for key, value in pairs:
            outer.setdefault(key, value)


def unknown_dependency() -> None:
    """A value whose tokens are not known was read: the entry being computed
    must not be stored (its computation counts as having read something
    unplanned)."""
    seen = reading.get()
    if seen is not None:
        seen.add("*")


def split_whole(raw: Any) -> tuple[Any, list[tuple[str, bytes]]]:
    """``(payload, [(token, value), ...])`` of a whole stored value (READ's "whole")."""
    if not isinstance(raw, bytes):
        return raw, []
    lines = raw.split(b"\n", 1)
    count = int(lines[0])
    parts = lines[1].split(b"\n", 2 * count)
    pairs = [(parts[i].decode(), parts[i + 1]) for i in range(0, 2 * count, 2)]
    return parts[2 * count], pairs


def _token_ms(lookup: Lookup) -> int:
    return max(lookup.settings.token_ttl * 1000, 2 * max(1, int(lookup.timeout * 1000)))


#: (label, reason) pairs already logged: once per process, not once per render.
_warned: set[tuple[str, str]] = set()


def warn_once(label: str, reason: str) -> None:
    """Log that the entry called ``label`` is not stored, and why (once per process)."""
    if (label, reason) in _warned:
        return
    _warned.add((label, reason))
    logger.warning("perfkit: %s is not stored: %s", label, reason)


def _not_covered(label: str, tables: set[str]) -> None:
    if "*" in tables:
        warn_once(label, "it wrote to the database, or read something whose tables cannot be known")
    else:
        warn_once(
            label,
            f"it read {', '.join(sorted(tables))}, which its querysets do not cover; "
            f"add a queryset of {'it' if len(tables) == 1 else 'each'} to them",
        )


def _plan(lookup: Lookup) -> Plan | None:
    try:
        return lookup.make_plan()
    except Exception:
        _plan_failed()
        return None


def _plan_failed() -> None:
    # Not knowing what a result depends on means not storing it; never a 500.
    logger.warning("perfkit: cannot plan a cache entry; running uncached", exc_info=True)


# -- a hit in one MGET ------------------------------------------------------------------
#
# READ runs Lua, and Redis spends 15-20 µs on an EVALSHA (setting up the script's
# environment, a redis.call per token) where a GET costs 0.5 µs and an MGET of
# the entry and its tokens 1.5 µs. An entry's token keys are written in its
# header, and they are the same every time the same entry is stored (the same
# query reads the same tables and rows), so each process remembers them per
# entry after reading the entry once through READ, and from then on reads the
# entry and those tokens in one MGET (atomic, like the script, and in one hash
# slot) and compares the values here. A header that lists other keys than the
# remembered ones is read again through READ. Same answer as the script, for
# every state of the entry and its tokens (tested).

#: entry key -> its token keys, as its header lists them (bytes, in order).
_token_keys: dict[str, list[bytes]] = {}
#: Entries remembered per process; past this, the memo starts afresh.
TOKEN_KEYS_MAX = 4096
_WHOLE = ("whole",)


def _mget(keys: list[Any], client: Any) -> Any:
    return command(client, "MGET", *keys)


async def _amget(keys: list[Any], client: Any) -> Any:
    return await client.mget(keys)


def valid_payload(reply: Any, tokens: list[bytes]) -> Any:
    """The payload of an MGET of ``[entry, *tokens]`` (``tokens``: the entry's
    remembered token keys) if the entry exists and each token it records has
    the recorded value; None if not (a miss, as READ would answer, or Redis did
    not answer); ``_UNREAD`` if its header lists other tokens: read it through
    READ."""
    if type(reply) is not list:
        return None
    whole = reply[0]
    if whole is None:
        return None
    count = len(tokens)
    parts = whole.split(b"\n", 2 * count + 1)
    if len(parts) != 2 * count + 2 or parts[0] != b"%d" % count:
        return _UNREAD
    for i, key in enumerate(tokens):
        if parts[2 * i + 1] != key:
            return _UNREAD
        if parts[2 * i + 2] != reply[i + 1]:
            return None  # the token moved, or is gone (None)
    return parts[-1]


def _learn(entry: str, whole: Any) -> Any:
    """READ's "whole" reply -> the payload; remembers the entry's token keys."""
    if not isinstance(whole, bytes):
        return whole
    count_end = whole.find(b"\n")
    count = int(whole[:count_end])
    parts = whole.split(b"\n", 2 * count + 1)
    if len(_token_keys) >= TOKEN_KEYS_MAX:
        _token_keys.clear()
    _token_keys[entry] = [parts[2 * i + 1] for i in range(count)]
    return parts[-1]


def _hit(lookup: Lookup, raw: Any, started: float) -> tuple[Any, Any]:
    """``(value, raw)``: the value of READ's reply ``raw`` if it is to be served
    now (counted as a hit), else ``MISSING`` and the reply the protocol goes on
    with (None for an unreadable entry: a miss, already logged)."""
    if raw is None:
        return MISSING, None
    value, refresh = decode(raw, lookup.settings.early_refresh_beta)
    if value is MISSING:
        return MISSING, None
    if refresh:
        return MISSING, raw
    count_lookup(True, time.perf_counter() - started)
    return value, raw


def get(lookup: Lookup, compute: Callable[[], Any]) -> Any:
    """The cached result of ``compute``, or its fresh result (stored when it may be)."""
    gateway = get_gateway()
    if lookup.force or depending.get() is not None:
        steps = _protocol(lookup)
    else:
        # The hit, which is most calls, without the protocol's generator: one
        # READ, decode, count. Anything else goes on in the protocol from here.
        started = time.perf_counter()
        entry = lookup.entry
        tokens = _token_keys.get(entry)
        raw = _UNREAD
        if tokens is not None:
            reply = gateway.run(functools.partial(_mget, [entry, *tokens]), None)
            raw = valid_payload(reply, tokens)
        if raw is _UNREAD:
            raw = _learn(entry, gateway.run_script(READ, [entry], _WHOLE, None))
        value, raw = _hit(lookup, raw, started)
        if value is not MISSING:
            return value
        steps = _protocol(lookup, started, raw)
    answer: Any = None
    try:
        while True:
            step = steps.send(answer)
            if step[0] == "script":
                answer = gateway.run_script(step[1], step[2], step[3], None)
            elif step[0] == "sleep":
                time.sleep(step[1])
                answer = None
            elif step[0] == "plan":
                answer = _plan(lookup)
            else:
                try:
                    answer = compute()
                except BaseException as exc:
                    answer = None
                    step = steps.throw(exc)
                    # The protocol releases the lock, then re-raises.
                    while True:
                        answer = gateway.run_script(step[1], step[2], step[3], None)
                        step = steps.send(answer)
    except StopIteration as done:
        return done.value


async def aget(lookup: Lookup, compute: Callable[[], Awaitable[Any]]) -> Any:
    """The async form of :func:`get`: Redis through ``redis.asyncio``; ``compute`` awaited."""
    gateway = get_gateway()
    if lookup.force or depending.get() is not None:
        steps = _protocol(lookup)
    else:
        started = time.perf_counter()
        entry = lookup.entry
        tokens = _token_keys.get(entry)
        raw = _UNREAD
        if tokens is not None:
            keys = [entry, *tokens]
            if gateway.short_lived_loop():
                # An async view under WSGI: a loop per request, where an async
                # client would connect per call (see RedisGateway.arun_script).
                reply = gateway.run(functools.partial(_mget, keys), None)
            else:
                reply = await gateway.arun(functools.partial(_amget, keys), None)
            raw = valid_payload(reply, tokens)
        if raw is _UNREAD:
            raw = _learn(entry, await gateway.arun_script(READ, [entry], _WHOLE, None))
        value, raw = _hit(lookup, raw, started)
        if value is not MISSING:
            return value
        steps = _protocol(lookup, started, raw)
    answer: Any = None
    try:
        while True:
            step = steps.send(answer)
            if step[0] == "script":
                answer = await gateway.arun_script(step[1], step[2], step[3], None)
            elif step[0] == "sleep":
                await asyncio.sleep(step[1])
                answer = None
            elif step[0] == "plan":
                try:
                    answer = lookup.make_plan()
                except SynchronousOnlyOperation:
                    # Compiling asked the database something (a version query).
                    answer = await sync_to_async(_plan)(lookup)
                except Exception:
                    _plan_failed()
                    answer = None
            else:
                try:
                    answer = await compute()
                except BaseException as exc:
                    answer = None
                    step = steps.throw(exc)
                    while True:
                        answer = await gateway.arun_script(step[1], step[2], step[3], None)
                        step = steps.send(answer)
    except StopIteration as done:
        return done.value
