"""Version tokens: Redis counters that say "this data has changed".

An entry cached by ``.cache()`` or by cache on write records the
tokens it was computed under, with their values. It is valid while every one of
them still has that value; a write bumps the tokens of what it changed, and the
entries that depended on them stop matching. Nothing is deleted, nothing is
scanned, and no clock is involved: tokens are counters.

The tokens of one database alias (every key shares the hash tag
``{v:<alias>}``, so one Lua script can read them all, also on Redis Cluster):

=====================  ===================================================
``epoch``              every entry of the alias depends on it; bumped by
                       :func:`invalidate_all`, by migrations, by writes perfkit
                       cannot attribute to a table, and after an outage
``t:<table>``          every entry that reads the table; bumped by writes that
                       may touch any row (``UPDATE ... WHERE status = ...``)
``s:<table>``          entries that read the table without a finer condition
                       (lists, counts); bumped by every write to the table
``f:<table>:<col>:v``  entries filtered on ``col = v`` (a primary key or a
                       foreign key) and the rows in a filtered list; bumped
                       when a write gives a row that value, or touches that row
``g:<table>:<col>``    every entry filtered on ``col``; bumped when a row
                       changes and its ``col`` is not known
``w:<table>``          every on-write entry reading the table; bumped by
                       every write to it that no model signal announced
                       (:mod:`.announced`)
=====================  ===================================================

Cache on write adds tokens of its own in the same slot: ``a:<function>``
(every entry of a function) and ``e:<function>:<arguments>`` (one entry,
bumped before it is recomputed); see :mod:`django_perfkit.cache.onwrite`.

Eviction and expiry are safe: a token that is missing is created with a random
start value, never 0 or 1, so an entry that depended on an evicted token never
matches again. Tokens expire after ``TOKEN_TTL`` (at least twice the longest
entry timeout); an expired token only costs misses.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from django_perfkit.conf import get_settings
from django_perfkit.redis import LuaScript, get_gateway

__all__ = [
    "BUMP",
    "Tokens",
    "abump",
    "bump",
    "init_seed",
    "mark_missed",
    "ready_for_reads",
    "tokens_for",
]

#: Bump each key: ``INCR`` it; one that did not exist (``INCR`` answers 1: tokens
#: never hold 0) starts at a random value instead. ARGV: seed, token TTL in ms.
BUMP = LuaScript(
    """
local seed = ARGV[1]
local ttl = tonumber(ARGV[2])
for i = 1, #KEYS do
  if redis.call('INCR', KEYS[i]) == 1 then
    redis.call('SET', KEYS[i], seed .. i, 'PX', ttl)
  end
end
return #KEYS
""",
    name="versions.bump",
    poll=False,  # right after the write: see LuaScript
)


def init_seed() -> str:
    """A random decimal start for tokens created now (12 digits, then the key's index)."""
    # 40 random bits reduced to 12 digits, from a generator of perfkit's own:
    # seeded from os.urandom, and again in every forked child (so sibling
    # workers never share a sequence), and out of reach of a random.seed() in
    # the project. os.urandom itself costs a system call on every write.
    return str(100_000_000_000 + _seeds.getrandbits(40) % 899_999_999_999)


_seeds = random.Random()
if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_seeds.seed)


class Tokens:
    """Key names of the version tokens of one database alias."""

    __slots__ = ("alias", "base", "epoch")

    def __init__(self, prefix: str, alias: str) -> None:
        self.alias = alias
        self.base = f"{prefix}:{{v:{alias}}}:"
        self.epoch = self.base + "epoch"

    @classmethod
    def from_base(cls, base: str, alias: str = "") -> Tokens:
        tokens = cls.__new__(cls)
        tokens.alias = alias
        tokens.base = base
        tokens.epoch = base + "epoch"
        return tokens

    def table(self, table: str) -> str:
        return f"{self.base}t:{table}"

    def scan(self, table: str) -> str:
        return f"{self.base}s:{table}"

    def value(self, table: str, column: str, value: Any) -> str:
        return f"{self.base}f:{table}:{column}:{token_value(value)}"

    def generation(self, table: str, column: str) -> str:
        return f"{self.base}g:{table}:{column}"

    def key(self, kind: str, name: str) -> str:
        """Another key in the alias's slot (cache entries ``q:``, locks ``l:``)."""
        return f"{self.base}{kind}:{name}"


def token_value(value: Any) -> str:
    """A key-safe spelling of a column value (an int as itself, anything else hashed)."""
    if type(value) is int:
        return str(value)
    import hashlib

    text = f"{type(value).__name__}:{value}"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


_tokens: dict[tuple[str, str], Tokens] = {}


def tokens_for(alias: str) -> Tokens:
    gateway = get_gateway()
    key = (gateway.prefix, alias)
    tokens = _tokens.get(key)
    if tokens is None:
        tokens = _tokens[key] = Tokens(gateway.prefix, alias)
    return tokens


# -- writes that could not be announced ----------------------------------------

_lock = threading.Lock()
#: Aliases whose epoch must be bumped before their cache entries may be used
#: again, each with a count of the misses, so that one made while an epoch bump
#: was in flight is not cleared by it.
_missed: dict[str, int] = {}
#: The breaker's ``times_opened`` when the cache last looked.
_breaker_opens_seen = 0


def mark_missed(alias: str) -> None:
    """A bump for ``alias`` did not reach Redis: distrust its entries until the epoch moves."""
    with _lock:
        _missed[alias] = _missed.get(alias, 0) + 1


def _all_aliases() -> list[str]:
    from django.conf import settings

    return list(getattr(settings, "DATABASES", {}) or ["default"])


def _pending(gateway: Any) -> dict[str, int]:
    global _breaker_opens_seen
    opens = gateway.breaker.times_opened
    if opens != _breaker_opens_seen:
        # Redis was out long enough to open the breaker. Another process may
        # have written meanwhile and failed to bump: start from a new epoch.
        with _lock:
            _breaker_opens_seen = opens
            for alias in _all_aliases():
                _missed[alias] = _missed.get(alias, 0) + 1
    return _missed


def ready_for_reads(alias: str) -> bool:
    """May entries of ``alias`` be read? False until a missed invalidation is made good.

    Costs an attribute read when nothing was missed (the hit path); otherwise
    tries to bump the epoch once, through the gateway and its breaker.
    """
    gateway = get_gateway()
    pending = _pending(gateway)
    if not pending:
        return True
    snapshot = dict(pending)
    if _bump_epochs(gateway, sorted(snapshot)):
        _made_good(snapshot)
        return True
    return False


def pending_epochs() -> bool:
    """Is an epoch bump owed (a missed bump, or an outage that opened the breaker)?"""
    return bool(_pending(get_gateway()))


async def aready_for_reads(alias: str) -> bool:
    """The async form of :func:`ready_for_reads`: the epoch bump goes through ``redis.asyncio``."""
    gateway = get_gateway()
    pending = _pending(gateway)
    if not pending:
        return True
    snapshot = dict(pending)
    ok = True
    for missed_alias in sorted(snapshot):
        keys = [tokens_for(missed_alias).epoch]
        done = await gateway.arun_script(BUMP, keys, [init_seed(), _ttl_ms()], None)
        ok = ok and done is not None
    if ok:
        _made_good(snapshot)
    return ok


def _made_good(snapshot: dict[str, int]) -> None:
    with _lock:
        for alias, count in snapshot.items():
            if _missed.get(alias) == count:
                del _missed[alias]


def _bump_epochs(gateway: Any, aliases: Iterable[str]) -> bool:
    ttl = _ttl_ms()
    ok = True
    for alias in aliases:
        keys = [tokens_for(alias).epoch]
        done = gateway.run_script(BUMP, keys, [init_seed(), ttl], None)
        ok = ok and done is not None
    return ok


def _ttl_ms() -> int:
    return get_settings().cache.token_ttl * 1000


def _with_missed_epoch(alias: str, keys: Sequence[str]) -> tuple[list[str], int | None]:
    # A process that only writes (a worker, a command) never reads the cache,
    # so it makes a missed bump good with its next successful one.
    count = _missed.get(alias)
    if count is None:
        return list(keys), None
    return [*keys, tokens_for(alias).epoch], count


def bump(alias: str, keys: Sequence[str]) -> bool:
    """Bump ``keys`` (tokens of ``alias``) in one round trip; remember a failure."""
    if not keys:
        return True
    keys, missed = _with_missed_epoch(alias, keys)
    done = get_gateway().run_script(BUMP, keys, [init_seed(), _ttl_ms()], None)
    if done is None:
        mark_missed(alias)
        return False
    if missed is not None:
        _made_good({alias: missed})
    return True


async def abump(alias: str, keys: Sequence[str]) -> bool:
    """The async form of :func:`bump`."""
    if not keys:
        return True
    keys, missed = _with_missed_epoch(alias, keys)
    done = await get_gateway().arun_script(BUMP, keys, [init_seed(), _ttl_ms()], None)
    if done is None:
        mark_missed(alias)
        return False
    if missed is not None:
        _made_good({alias: missed})
    return True


def reset_state() -> None:
    """Forget missed invalidations and cached key names (tests, settings changes)."""
    global _breaker_opens_seen
    with _lock:
        _missed.clear()
        _tokens.clear()
        _breaker_opens_seen = 0
