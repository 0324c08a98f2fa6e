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

import redis
from redis.exceptions import NoScriptError, ResponseError

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
            return command(client, "EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(self.source)
            return command(client, "EVALSHA", self.sha, len(keys), *keys, *args)

    async def arun(self, client: Any, keys: Sequence[KeyT], args: Sequence[ArgT]) -> Any:
        """Run on an async client (``redis.asyncio``)."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)


def command(client: Any, *args: Any) -> Any:
    """``client.execute_command(*args)``, the reply unparsed by callbacks.

    On a plain ``redis.Redis`` client, the command goes straight to a pooled
    connection, without redis-py's per-call machinery: its retry loop (perfkit's
    clients make one attempt: see the gateway) and its observability hooks,
    which cost 20-25 µs of a 100 µs loopback round trip on our benchmark
    machine. Only for commands whose reply redis-py does not rewrite
    (``EVALSHA``, ``MGET``). Other clients (a cluster's, a single-connection
    client) take redis-py's own path.
    """
    if type(client) is not redis.Redis or client.connection is not None:
        return client.execute_command(*args)
    pool = client.connection_pool
    connection: Any = pool.get_connection()
    try:
        connection.send_command(*args)
        return connection.read_response()
    except ResponseError:
        raise  # a whole reply was read: the connection is in step
    except BaseException:
        # A timeout or an interruption mid-reply leaves the connection out of
        # step with the server: never hand it out again.
        connection.disconnect()
        raise
    finally:
        pool.release(connection)
