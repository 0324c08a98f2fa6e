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
import os
import select
import socket
import threading
import weakref
from collections.abc import Sequence
from time import perf_counter
from typing import Any

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

KeyT = str | bytes
ArgT = str | bytes | int | float


class LuaScript:
    """A Lua script: its source and SHA1. Run it with :meth:`RedisGateway.run_script`.

    ``poll``: whether a call polls for its reply before it sleeps
    (:class:`ReplySpin`). False for scripts that run right after a database
    round trip (a token bump, a cache store): Redis has gone idle by then, its
    reply takes longer, and polling for it cost a save more CPU time than it
    saved in latency (measured: +60-70 µs of CPU for 15-20 µs).
    """

    __slots__ = ("name", "poll", "source", "sha")

    def __init__(self, source: str, name: str = "", poll: bool = True) -> None:
        self.source = source
        self.name = name or "script"
        self.poll = poll
        self.sha = hashlib.sha1(source.encode("utf-8"), usedforsecurity=False).hexdigest()

    def __repr__(self) -> str:
        return f"<LuaScript {self.name} {self.sha[:8]}>"

    def run(self, client: Any, keys: Sequence[KeyT], args: Sequence[ArgT]) -> Any:
        """Run on a sync client (``redis.Redis`` or ``redis.cluster.RedisCluster``)."""
        try:
            return command(client, "EVALSHA", self.sha, len(keys), *keys, *args, poll=self.poll)
        except NoScriptError:
            client.script_load(self.source)
            return command(client, "EVALSHA", self.sha, len(keys), *keys, *args, poll=self.poll)

    async def arun(self, client: Any, keys: Sequence[KeyT], args: Sequence[ArgT]) -> Any:
        """Run on an async client (``redis.asyncio``)."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)


def command(client: Any, *args: Any, poll: bool = True) -> Any:
    """``client.execute_command(*args)``, the reply unparsed by callbacks.

    On a plain ``redis.Redis`` client, the command goes straight to a
    connection, without redis-py's per-call machinery: its retry loop
    (perfkit's clients make one attempt: see the gateway), its observability
    hooks, and the pool's checkout and return, which together cost 30-40 µs
    of a 100 µs loopback round trip on our benchmark machine. Each thread
    keeps the connection it used for its next command (see :class:`_Kept`).
    Only for commands whose reply redis-py does not rewrite (``EVALSHA``,
    ``MGET``). Other clients (a cluster's, a single-connection client) take
    redis-py's own path. ``poll``: poll for the reply first, on perfkit's own
    client (see :class:`ReplySpin`).
    """
    if type(client) is not redis.Redis or client.connection is not None:
        return client.execute_command(*args)
    spin = getattr(client, "perfkit_spin", None) if poll else None
    pool = client.connection_pool
    kept = _kept()
    pid = os.getpid()
    connection = kept.take(pool, pid)
    # A kept connection may have gone stale since its last command (Redis
    # restarted, or closed it as idle): then once more, on a connection from
    # the pool, as the pool itself would have checked it before handing it out.
    retry_if_stale = connection is not None
    if connection is None:
        connection = pool.get_connection()
    while True:
        try:
            reply = _round_trip(connection, args, spin)
        except RedisConnectionError:
            pool.release(connection)
            if not retry_if_stale:
                raise
            retry_if_stale = False
            connection = pool.get_connection()
            continue
        except NoScriptError:
            kept.keep(pool, pid, connection)
            raise
        except BaseException:
            pool.release(connection)
            raise
        kept.keep(pool, pid, connection)
        return reply


def _round_trip(connection: Any, args: tuple[Any, ...], spin: ReplySpin | None = None) -> Any:
    try:
        _send(connection, args)
        if spin is not None and spin.budget:
            spin.wait(connection._sock)
        return connection.read_response()
    except NoScriptError:
        raise  # a whole reply was read: the connection is in step
    except BaseException:
        # A timeout or an interruption mid-reply leaves the connection out of
        # step with the server, and any other error reply (READONLY after a
        # failover, LOADING) means it is not the server to talk to: never
        # use it again.
        connection.disconnect()
        raise


_hiredis_pack: Any
_HiredisPacker: Any
try:
    from hiredis import pack_command as _hiredis_pack
    from redis.connection import HiredisRespSerializer as _HiredisPacker
except ImportError:  # redis-py's own packer then, through send_command()
    _hiredis_pack = _HiredisPacker = None


def _send(connection: Any, args: tuple[Any, ...]) -> None:
    # redis-py's hiredis packer looks at every argument in Python (for a
    # command name with a space, a bytearray) before hiredis packs them: a
    # PING through command() went from 37.6k to 29.1k instructions (callgrind)
    # without it. perfkit's commands are single-word names with str, bytes and
    # int arguments, which hiredis packs as they are; anything else (and a
    # connection with another packer) goes redis-py's way.
    name = args[0]
    if (
        _HiredisPacker is not None
        and type(getattr(connection, "_command_packer", None)) is _HiredisPacker
        and type(name) is str
        and " " not in name
    ):
        try:
            packed = _hiredis_pack(args)
        except TypeError:
            pass
        else:
            connection.send_packed_command([packed])
            return
    connection.send_command(*args)


class ReplySpin:
    """How a command waits for its reply: polling for up to ``budget`` seconds, then asleep.

    A process that sleeps in ``recv()`` for a reply 30-60 µs away has to be
    woken up when it comes, and then runs with cold caches: on our benchmark
    machine (a 2-vCPU VM, PostgreSQL and Redis on loopback) a cache hit took
    182-201 µs that way, and 130-148 µs polling the socket for up to 100 µs
    first, for the same CPU time (the two ways in turn in one process, 3
    runs). A save's token bump took 15-20 µs less but 60-70 µs more CPU time,
    so the scripts that run right after a database round trip do not poll
    (``LuaScript.poll``). ``REDIS_SPIN`` sets the budget (0: always sleep).

    Where polling does not pay, it stops by itself: after ``GIVE_UP`` polls in
    a row that ran out of budget (a Redis across a network, whose replies take
    longer), commands sleep at once for the next ``PAUSE`` commands, then try
    again. It never polls on a single CPU (Redis could not run meanwhile), on
    a socket that is not a plain ``socket.socket`` (gevent's, TLS) or where
    ``select.poll`` does not exist. Shared by the threads of a process: the
    counters are advisory, and a lost update costs one poll more or less.
    """

    __slots__ = ("budget", "outs", "paused")

    #: Polls in a row that ran out of budget before polling pauses...
    GIVE_UP = 8
    #: ...and for how many commands.
    PAUSE = 1024

    def __init__(self, budget: float) -> None:
        self.budget = budget if budget > 0 and _can_spin() else 0.0
        self.outs = 0
        self.paused = 0

    def wait(self, sock: Any) -> None:
        """Return when ``sock`` is readable or the budget is spent."""
        if self.paused:
            self.paused -= 1
            return
        if type(sock) is not socket.socket:
            return
        try:
            poller = _local.poller
        except AttributeError:
            poller = _local.poller = select.poll()
        fd = sock.fileno()
        poller.register(fd, select.POLLIN)
        try:
            deadline = perf_counter() + self.budget
            while not poller.poll(0):
                if perf_counter() >= deadline:
                    self.outs += 1
                    if self.outs >= self.GIVE_UP:
                        self.outs = 0
                        self.paused = self.PAUSE
                    return
        finally:
            poller.unregister(fd)
        self.outs = 0


def _can_spin() -> bool:
    if not hasattr(select, "poll"):
        return False
    affinity = getattr(os, "sched_getaffinity", None)
    return affinity is None or len(affinity(0)) > 1


class _Kept:
    """The connection a thread used for its last command, kept for its next one.

    Taken out while a command runs (a command in a signal handler or a nested
    call checks out another from the pool). A connection kept by a thread that
    has ended goes back to its pool (the box's finalizer); one kept across a
    fork, or from a pool since replaced, is never used again.
    """

    __slots__ = ("box", "__weakref__")

    def __init__(self) -> None:
        # [pool, connection, pid]: shared with the finalizer, which must not
        # hold the _Kept itself.
        self.box: list[Any] = [None, None, 0]
        weakref.finalize(self, _give_back, self.box)

    def take(self, pool: Any, pid: int) -> Any:
        box = self.box
        connection = box[1]
        if connection is None:
            return None
        box[1] = None
        if box[0] is pool and box[2] == pid and pool.owns_connection(connection):
            # owns_connection(): a Sentinel pool's compares the connection's
            # server with the master it knows now (a failover since).
            return connection
        if box[2] == pid:
            # From a replaced pool (its owner closed it), or a former master:
            # the pool's release disconnects what it no longer owns.
            box[0].release(connection)
        return None  # a fork's parent's: not ours to touch

    def keep(self, pool: Any, pid: int, connection: Any) -> None:
        box = self.box
        if box[1] is not None:
            pool.release(connection)  # one is kept already (a nested command's)
        else:
            box[0], box[1], box[2] = pool, connection, pid


def _give_back(box: list[Any]) -> None:
    pool, connection, pid = box
    if connection is not None and pid == os.getpid():
        pool.release(connection)


_local = threading.local()


def _kept() -> _Kept:
    try:
        return _local.kept  # type: ignore[no-any-return]
    except AttributeError:
        kept = _local.kept = _Kept()
        return kept
