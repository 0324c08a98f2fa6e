"""perfkit's one Redis gateway: clients, keys, Lua scripts, timeouts and a circuit breaker.

See :mod:`django_perfkit.redis.gateway` for the failure policy.
"""

from __future__ import annotations

from django_perfkit.redis.breaker import CircuitBreaker
from django_perfkit.redis.gateway import (
    OUTAGE_ERRORS,
    RedisGateway,
    RedisNotConfigured,
    get_gateway,
    reset_gateway,
)
from django_perfkit.redis.scripts import LuaScript

__all__ = [
    "OUTAGE_ERRORS",
    "CircuitBreaker",
    "LuaScript",
    "RedisGateway",
    "RedisNotConfigured",
    "get_gateway",
    "reset_gateway",
]
