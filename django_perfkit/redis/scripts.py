"""Lua scripts, sent once and then called by their SHA1.

A :class:`LuaScript` is a plain value (source and SHA1) that a feature defines at
module level; creating one touches no server. The gateway calls it with
``EVALSHA``; when the server does not know the script (first call, a restart, a
``SCRIPT FLUSH``, a failover to a replica that never saw it) Redis answers
``NOSCRIPT`` and the gateway loads it and calls it again. The script body
therefore crosses the network once per server, not once per call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError

KeyT = str | bytes
ArgT = str | bytes | int | float


class LuaScript:
    """A Lua script: its source and SHA1. Run it with :meth:`RedisGateway.run_script`."""

    __slots__ = ("name", "source", "sha")

    def __init__(self, source: str, name: str = "") -> None:
        self.source = source
        self.name = name or "script"
        self.sha = hashlib.sha1(source.encode("utf-8"), usedforsecurity=False).hexdigest()

    def __repr__(self) -> str:
        return f"<LuaScript {self.name} {self.sha[:8]}>"

    def run(self, client: Any, keys: Sequence[KeyT], args: Sequence[ArgT]) -> Any:
        """Run on a sync client (``redis.Redis`` or ``redis.cluster.RedisCluster``)."""
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)

    async def arun(self, client: Any, keys: Sequence[KeyT], args: Sequence[ArgT]) -> Any:
        """Run on an async client (``redis.asyncio``)."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)
