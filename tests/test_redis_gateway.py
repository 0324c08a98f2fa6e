from __future__ import annotations

import asyncio
import importlib.util
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.test import override_settings

from django_perfkit.record import record_request
from django_perfkit.redis import CircuitBreaker, LuaScript, RedisGateway, get_gateway
from tests.redis_servers import BlackHole, PrivateCluster, PrivateRedis, PrivateSentinel
from tests.settings import KEY_PREFIX

INCR_BY_ARG = LuaScript("return redis.call('INCRBY', KEYS[1], ARGV[1])", name="incr-by-arg")


def test_key_has_prefix_and_hash_tag() -> None:
    gw = get_gateway()
    assert gw.key("ratelimit", "login", "ip", 5) == f"{KEY_PREFIX}:{{ratelimit:login}}:ip:5"
    assert redis.cluster.key_slot(gw.key("x", "t", "a").encode()) == redis.cluster.key_slot(
        gw.key("x", "t", "b").encode()
    )


def test_gateway_is_rebuilt_when_settings_change() -> None:
    gw = get_gateway()
    assert get_gateway() is gw
    with override_settings(PERFKIT={"KEY_PREFIX": KEY_PREFIX + "-other"}):
        assert get_gateway() is not gw
        assert get_gateway().prefix == KEY_PREFIX + "-other"


def test_client_comes_from_the_django_redis_alias_with_our_timeouts() -> None:
    gw = get_gateway()
    kwargs = gw.client.connection_pool.connection_kwargs
    assert kwargs["db"] == 13
    assert kwargs["socket_timeout"] == 0.05
    assert kwargs["socket_connect_timeout"] == 0.05
    # Same server as the site's cache: what one writes, the other reads.
    key = gw.key("test", "shared", "k")
    assert gw.run(lambda c: c.set(key, b"v"), None)
    from django_redis import get_redis_connection

    assert get_redis_connection("default").get(key) == b"v"


def test_run_returns_the_result() -> None:
    gw = get_gateway()
    key = gw.key("test", "run", "n")
    assert gw.run(lambda c: c.incr(key), None) == 1
    assert gw.run(lambda c: c.incr(key), None) == 2
    assert gw.failures == 0


def test_lua_script_evalsha_and_noscript_reload() -> None:
    private = PrivateRedis()
    private.start()
    try:
        with override_settings(PERFKIT={"REDIS_URL": private.url, "KEY_PREFIX": KEY_PREFIX}):
            gw = get_gateway()
            key = gw.key("test", "lua", "n")
            assert gw.run_script(INCR_BY_ARG, [key], [5], None) == 5
            raw = redis.Redis.from_url(private.url)
            assert raw.script_exists(INCR_BY_ARG.sha) == [True]
            # The server forgets its scripts (restart, failover): the gateway reloads.
            raw.script_flush()
            assert gw.run_script(INCR_BY_ARG, [key], [2], None) == 7
            raw.close()
            gw.close()
    finally:
        private.stop()


def test_script_bug_is_reported_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    broken = LuaScript("return redis.call('NOSUCHCOMMAND')", name="broken")
    gw = get_gateway()
    with record_request() as rec:
        assert gw.run_script(broken, [gw.key("t", "t")], [], "fallback") == "fallback"
    assert rec.errors and "redis:" in rec.errors[0]
    assert gw.breaker.state == "closed"  # Redis answered: not an outage
    assert "rejected a perfkit command" in caplog.text


@pytest.fixture
def stopped_redis() -> Iterator[PrivateRedis]:
    private = PrivateRedis()
    private.start()
    yield private
    private.stop()


def _gateway_for(url: str, **extra: object) -> RedisGateway:
    with override_settings(PERFKIT={"REDIS_URL": url, "KEY_PREFIX": KEY_PREFIX, **extra}):
        return get_gateway()


def test_stopped_redis_degrades_then_recovers(stopped_redis: PrivateRedis) -> None:
    gw = _gateway_for(stopped_redis.url, BREAKER_FAILURES=2, BREAKER_COOLDOWN=0.3)
    assert gw.ping() is True
    port = stopped_redis.port
    stopped_redis.stop()
    started = time.monotonic()
    with record_request() as rec:
        results = [gw.run(lambda c: c.incr("perfkit-test:n"), "degraded") for _ in range(10)]
    elapsed = time.monotonic() - started
    assert results == ["degraded"] * 10
    # One attempt per call, no retry loop: two refused connections, then the
    # breaker skips. (A redis.Redis(...) built with redis-py 8 defaults retries 10
    # times with backoff, seconds here; the bound is loose: not a benchmark.)
    assert elapsed < 1.0
    assert gw.breaker.state == "open"
    assert rec.redis_failures == 10
    assert gw.failures == 10
    # Back up on the same port: after the cool-down one trial closes the breaker.
    restarted = PrivateRedis(port)
    restarted.start()
    try:
        time.sleep(0.35)
        assert gw.run(lambda c: c.incr("perfkit-test:n"), "degraded") == 1
        assert gw.breaker.state == "closed"
    finally:
        gw.close()
        restarted.stop()


def test_black_holed_redis_costs_one_timeout_per_call_until_the_breaker_opens() -> None:
    hole = BlackHole()
    try:
        gw = _gateway_for(hole.url, REDIS_TIMEOUT=0.05, BREAKER_FAILURES=3, BREAKER_COOLDOWN=30)
        started = time.monotonic()
        for _ in range(50):
            assert gw.run(lambda c: c.get("perfkit-test:k"), "miss") == "miss"
        elapsed = time.monotonic() - started
        assert gw.breaker.state == "open"
        # Three calls waited for their timeout; the other 47 were skipped. The
        # bound is loose (this is a behaviour check, not a benchmark): 50 calls
        # that each waited would take at least 2.5 s.
        assert elapsed < 2.0
        assert gw.failures == 50
        gw.close()
    finally:
        hole.close()


async def test_async_client_runs_and_degrades(stopped_redis: PrivateRedis) -> None:
    # A generous connect timeout while the server is up: on a loaded CI machine
    # the first connect to a just-started redis-server once took over 50 ms.
    # Once it is stopped, connecting is refused at once whatever the timeout.
    gw = _gateway_for(
        stopped_redis.url, BREAKER_FAILURES=1, BREAKER_COOLDOWN=30, REDIS_CONNECT_TIMEOUT=1.0
    )
    assert await gw.arun(lambda c: c.incr("perfkit-test:a"), None) == 1
    assert await gw.arun_script(INCR_BY_ARG, ["perfkit-test:a"], [4], None) == 5
    client = gw.async_client()
    assert isinstance(client, redis.asyncio.Redis)
    stopped_redis.stop()
    started = time.monotonic()
    assert await gw.arun(lambda c: c.incr("perfkit-test:a"), "degraded") == "degraded"
    assert time.monotonic() - started < 1.0  # one attempt, no retry loop
    assert gw.breaker.state == "open"
    await gw.aclose()


async def test_async_client_from_the_django_redis_alias() -> None:
    gw = get_gateway()
    kwargs = gw.async_client().connection_pool.connection_kwargs
    assert kwargs["db"] == 13 and kwargs["socket_timeout"] == 0.05
    await gw.aclose()
    # The round trips with 1 s timeouts: with the default 50 ms, a stall of this
    # shared machine makes a call degrade, as designed (it failed a full run once).
    timeouts = {"REDIS_CONNECT_TIMEOUT": 1.0, "REDIS_TIMEOUT": 1.0}
    with override_settings(PERFKIT={**settings.PERFKIT, **timeouts}):
        gw = get_gateway()
        key = gw.key("test", "async", "k")
        assert await gw.arun(lambda c: c.set(key, "v"), None)
        assert await gw.arun(lambda c: c.get(key), None) == b"v"
        assert gw.async_client().connection_pool.connection_kwargs["db"] == 13
        await gw.aclose()


def test_no_redis_configured_returns_defaults_without_trying() -> None:
    with override_settings(PERFKIT={"REDIS_CACHE_ALIAS": None}):
        gw = get_gateway()
        assert gw.configured is False
        assert gw.run(lambda c: c.ping(), "no-redis") == "no-redis"
        assert gw.failures == 0


def test_breaker_half_open_lets_one_trial_through() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=2, cooldown=10, clock=lambda: now[0])
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 10.0
    assert breaker.state == "half-open"
    assert breaker.allow() is True  # the trial
    assert breaker.allow() is False  # everyone else waits for it
    breaker.record_failure()  # trial failed: another full cool-down
    assert breaker.state == "open"
    now[0] = 15.0
    assert not breaker.allow()
    now[0] = 20.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow()
    assert breaker.times_opened == 1


def test_test_settings_use_a_dedicated_database() -> None:
    assert settings.REDIS_URL.endswith("/13")


def test_default_alias_that_is_not_django_redis_means_no_redis() -> None:
    # The W004 case: perfkit was not told about Redis and the default cache is
    # locmem. Calls must return their default, not raise NotImplementedError.
    caches = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    with override_settings(PERFKIT={"KEY_PREFIX": KEY_PREFIX}, CACHES=caches):
        gw = get_gateway()
        assert gw.configured is False
        assert gw.run(lambda c: c.ping(), "no-redis") == "no-redis"


def test_a_client_that_cannot_be_built_is_a_failure_not_an_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with override_settings(PERFKIT={"KEY_PREFIX": KEY_PREFIX, "REDIS_CACHE_ALIAS": "default"}):
        gw = get_gateway()
        assert gw.configured
        # The alias disappears after start-up (a settings reload gone wrong).
        from django.conf import settings as dj

        caches = dict(dj.CACHES)
        del caches["default"]
        gw.close()
        with override_settings(CACHES=caches):
            gw.settings = gw.settings  # same gateway object, client not built yet
            gw._client = None
            with record_request() as rec:
                assert gw.run(lambda c: c.ping(), "fallback") == "fallback"
        assert rec.redis_failures == 1
        assert "cannot build the Redis client" in caplog.text


MOVE_COUNT = LuaScript(
    "local n = redis.call('INCR', KEYS[1]); redis.call('SET', KEYS[2], n); return n",
    name="two-keys",
)


def test_redis_cluster_through_redis_url(cluster: PrivateCluster) -> None:
    with override_settings(
        PERFKIT={"REDIS_URL": cluster.url, "REDIS_CLUSTER": True, "KEY_PREFIX": KEY_PREFIX}
    ):
        gw = get_gateway()
        assert isinstance(gw.client, redis.cluster.RedisCluster)
        # Two keys in one script: legal on a cluster only because the hash tag
        # puts them in one slot.
        keys = [gw.key("test", "cluster", "count"), gw.key("test", "cluster", "copy")]
        assert gw.run_script(MOVE_COUNT, keys, [], None) == 1
        assert gw.run_script(MOVE_COUNT, keys, [], None) == 2
        assert gw.run(lambda c: c.get(keys[1]), None) == b"2"
        # Without the shared tag, the same script is refused by the cluster.
        untagged = ["perfkit-test:a", "perfkit-test:b"]
        assert gw.run_script(MOVE_COUNT, untagged, [], "refused") == "refused"
        gw.close()


async def test_redis_cluster_async(cluster: PrivateCluster) -> None:
    with override_settings(
        PERFKIT={"REDIS_URL": cluster.url, "REDIS_CLUSTER": True, "KEY_PREFIX": KEY_PREFIX}
    ):
        gw = get_gateway()
        keys = [gw.key("test", "acluster", "count"), gw.key("test", "acluster", "copy")]
        assert await gw.arun_script(MOVE_COUNT, keys, [], None) == 1
        assert await gw.arun(lambda c: c.get(keys[1]), None) == b"1"
        await gw.aclose()


async def test_replacing_the_gateway_closes_its_async_client_on_its_loop() -> None:
    gw = get_gateway()
    assert await gw.arun(lambda c: c.ping(), False) is True
    client = gw.async_client()
    assert client.connection_pool._available_connections  # one open connection
    with override_settings(PERFKIT={"KEY_PREFIX": KEY_PREFIX + "-2"}):
        assert get_gateway() is not gw  # the old one was closed...
    for _ in range(5):  # ...and its async client closes on this loop
        await asyncio.sleep(0)
    assert all(not c.is_connected for c in client.connection_pool._available_connections)


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[PrivateSentinel]:
    private = PrivateSentinel()
    try:
        private.start(str(tmp_path))
        yield private
    finally:
        private.stop()


def _sentinel_caches(sentinel: PrivateSentinel) -> dict[str, Any]:
    from django.conf import settings as dj

    return {
        **dj.CACHES,
        "sentinel": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": f"redis://{sentinel.service}/0",
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.SentinelClient",
                "CONNECTION_FACTORY": "django_redis.pool.SentinelConnectionFactory",
                "SENTINELS": [("127.0.0.1", sentinel.sentinel.port)],
            },
        },
    }


def test_gateway_through_a_sentinel_alias(sentinel: PrivateSentinel) -> None:
    with override_settings(
        CACHES=_sentinel_caches(sentinel),
        PERFKIT={"REDIS_CACHE_ALIAS": "sentinel", "KEY_PREFIX": KEY_PREFIX},
    ):
        gw = get_gateway()
        from redis.sentinel import SentinelConnectionPool

        assert isinstance(gw.client.connection_pool, SentinelConnectionPool)
        assert gw.client.connection_pool.connection_kwargs["socket_timeout"] == 0.05
        key = gw.key("test", "sentinel", "n")
        assert gw.run_script(INCR_BY_ARG, [key], [3], None) == 3
        # It reached the master the Sentinel named.
        master = redis.Redis(port=sentinel.master.port)
        assert master.get(key) == b"3"
        master.close()
        gw.close()


async def test_async_gateway_through_a_sentinel_alias(sentinel: PrivateSentinel) -> None:
    with override_settings(
        CACHES=_sentinel_caches(sentinel),
        PERFKIT={"REDIS_CACHE_ALIAS": "sentinel", "KEY_PREFIX": KEY_PREFIX},
    ):
        gw = get_gateway()
        key = gw.key("test", "asentinel", "n")
        assert await gw.arun_script(INCR_BY_ARG, [key], [2], None) == 2
        assert await gw.arun(lambda c: c.get(key), None) == b"2"
        await gw.aclose()


# -- commands straight to a pooled connection ---------------------------------------------


def test_a_direct_command_answers_as_redis_py_and_keeps_its_connection() -> None:
    import gc
    import threading

    from redis.exceptions import NoScriptError

    from django_perfkit.redis.scripts import _kept, command

    client = redis.Redis.from_url(settings.REDIS_URL)
    pool = client.connection_pool
    key = f"{KEY_PREFIX}:direct"
    client.set(key, b"value")
    try:
        assert command(client, "MGET", key, f"{key}:none") == client.mget([key, f"{key}:none"])
        kept = _kept().box[1]
        assert kept is not None and kept._sock is not None
        with pytest.raises(NoScriptError):
            command(client, "EVALSHA", "0" * 40, 0)  # a whole error reply
        assert _kept().box[1] is kept  # still in step: kept
        assert command(client, "MGET", key) == [b"value"]
        assert _kept().box[1] is kept
        # Closed by the server (a restart, an idle timeout): the next command
        # goes through on a fresh connection.
        kept_id = command(client, "CLIENT", "ID")  # on the kept connection
        socket = kept._sock
        assert client.client_kill_filter(_id=kept_id) == 1
        assert command(client, "MGET", key) == [b"value"]
        assert _kept().box[1]._sock not in (None, socket)
        assert command(client, "CLIENT", "ID") != kept_id
        # A thread's kept connection goes back to the pool when the thread ends.
        other = threading.Thread(target=command, args=(client, "MGET", key))
        other.start()
        other.join()
        gc.collect()
        assert len(pool._in_use_connections) == 1  # this thread's own
    finally:
        client.delete(key)
        client.close()


def test_a_direct_command_packs_what_hiredis_cannot_the_way_redis_py_does() -> None:
    from django_perfkit.redis import scripts
    from django_perfkit.redis.scripts import command

    client = redis.Redis.from_url(settings.REDIS_URL)
    key = f"{KEY_PREFIX}:packed"
    try:
        # With hiredis installed (the dev extra has it; the tox envs do not),
        # perfkit's own commands are packed by it directly, not through
        # redis-py's packer; without it, everything goes redis-py's way.
        connection = client.connection_pool.get_connection()
        if importlib.util.find_spec("hiredis") is not None:
            assert type(connection._command_packer) is scripts._HiredisPacker
        else:
            assert scripts._HiredisPacker is None
        client.connection_pool.release(connection)
        assert command(client, "SET", key, 12) == b"OK"
        assert command(client, "MGET", key, key.encode(), memoryview(key.encode())) == [b"12"] * 3
        # What hiredis does not pack goes redis-py's way, with redis-py's answers:
        # a bytearray, a command name with a space in it, a None.
        assert command(client, "MGET", bytearray(key.encode())) == [b"12"]
        assert isinstance(command(client, "CLIENT ID"), int)
        with pytest.raises(redis.exceptions.DataError):
            command(client, "MGET", None)
        assert command(client, "MGET", key) == [b"12"]  # the connection is still in step
    finally:
        client.delete(key)
        client.close()


def test_a_direct_command_that_times_out_drops_its_connection() -> None:
    from django_perfkit.redis.scripts import command

    hole = BlackHole()
    client = redis.Redis.from_url(hole.url, socket_timeout=0.05, socket_connect_timeout=0.5)
    try:
        with pytest.raises(redis.exceptions.TimeoutError):
            command(client, "MGET", "a")
        # Its reply may still arrive: the connection must never answer another call.
        connections = client.connection_pool._available_connections
        assert connections and all(c._sock is None for c in connections)
    finally:
        client.close()
        hole.close()


def test_a_direct_command_reads_a_reply_larger_than_one_socket_read_in_step() -> None:
    from django_perfkit.redis.scripts import command

    client = redis.Redis.from_url(settings.REDIS_URL)
    key = f"{KEY_PREFIX}:direct-big"
    big = bytes(range(256)) * 1024  # more than redis-py's 64 KiB read buffer
    client.set(key, big)
    try:
        assert command(client, "MGET", key, f"{key}:none") == [big, None]
        assert command(client, "MGET", key) == [big]
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            command(client, "LPUSH", key, b"x")
        assert command(client, "MGET", key) == [big]  # on a connection in step
    finally:
        client.delete(key)
        client.close()


@pytest.mark.parametrize("protocol", [2, 3])
def test_a_direct_command_answers_with_its_reply_not_a_push_before_it(protocol: int) -> None:
    from django_perfkit.redis.scripts import command

    client = redis.Redis.from_url(settings.REDIS_URL, protocol=protocol)
    other = redis.Redis.from_url(settings.REDIS_URL)
    key = f"{KEY_PREFIX}:direct-push"
    client.set(key, b"1")
    try:
        if protocol == 3:
            # Client-side caching on the kept connection: the server pushes an
            # invalidation of a key it read, ahead of the next command's reply.
            assert command(client, "CLIENT", "TRACKING", "ON") == b"OK"
        assert command(client, "MGET", key) == [b"1"]
        other.set(key, b"2")
        assert command(client, "MGET", key) == [b"2"]
        assert command(client, "MGET", key) == [b"2"]  # still in step
    finally:
        client.delete(key)
        client.close()
        other.close()


# -- polling for a reply (REDIS_SPIN) ----------------------------------------------------


def _polls_here() -> bool:
    from django_perfkit.redis.scripts import _can_spin

    return _can_spin()


needs_polling = pytest.mark.skipif(
    not _polls_here(), reason="perfkit never polls here (one CPU, or no select.poll)"
)


@needs_polling
def test_perfkits_own_client_polls_for_its_replies_and_answers_the_same() -> None:
    from django_perfkit.redis.scripts import ReplySpin, command

    with override_settings(PERFKIT={"REDIS_URL": settings.REDIS_URL, "KEY_PREFIX": KEY_PREFIX}):
        gw = get_gateway()
        spin = gw.client.perfkit_spin
        assert isinstance(spin, ReplySpin) and spin.budget == 0.0001
        key = gw.key("test", "spin")
        gw.client.delete(key)
        assert gw.run_script(INCR_BY_ARG, [key], [5], None) == 5
        assert command(gw.client, "MGET", key) == [b"5"]
        # A poll that sees its reply (within a second, surely) starts the count
        # of polls that ran out again.
        spin.budget, spin.outs = 1.0, ReplySpin.GIVE_UP - 1
        assert command(gw.client, "MGET", key) == [b"5"]
        assert (spin.outs, spin.paused) == (0, 0)
        gw.client.delete(key)
    with override_settings(PERFKIT={"REDIS_URL": settings.REDIS_URL, "REDIS_SPIN": 0}):
        assert get_gateway().client.perfkit_spin.budget == 0
    # A client the project builds itself is never given one.
    assert not hasattr(redis.Redis.from_url(settings.REDIS_URL), "perfkit_spin")


@needs_polling
def test_polling_that_keeps_running_out_of_budget_pauses() -> None:
    from django_perfkit.redis.scripts import ReplySpin, command

    client = redis.Redis.from_url(settings.REDIS_URL)
    # A budget far shorter than any round trip, for replies that Redis itself
    # holds back for 5 ms (BLPOP on an empty list): each poll runs out, as it
    # would with Redis across a network.
    client.perfkit_spin = spin = ReplySpin(1e-9)  # type: ignore[attr-defined]
    key = f"{KEY_PREFIX}:spin-out"
    try:
        # The scripts that run right after a database round trip never poll.
        from django_perfkit.versions.tokens import BUMP

        assert BUMP.run(client, [f"{key}:token"], ["100000000000", 60_000]) == 1
        assert spin.outs == 0
        client.delete(f"{key}:token")
        for i in range(ReplySpin.GIVE_UP - 1):
            assert command(client, "BLPOP", key, "0.005") is None
            assert (spin.outs, spin.paused) == (i + 1, 0)
        assert command(client, "BLPOP", key, "0.005") is None
        assert (spin.outs, spin.paused) == (0, ReplySpin.PAUSE)
        assert command(client, "MGET", key) == [None]  # sleeps: no poll
        assert (spin.outs, spin.paused) == (0, ReplySpin.PAUSE - 1)
    finally:
        client.close()


@needs_polling
def test_no_polling_on_a_single_cpu_or_on_a_socket_it_does_not_know() -> None:
    import socket
    import ssl
    import subprocess
    import sys

    from django_perfkit.redis.scripts import ReplySpin

    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity here")
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from django_perfkit.redis.scripts import ReplySpin; print(ReplySpin(0.0001).budget)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0.0"
    # A TLS socket (or gevent's) is not polled: its counts are left alone
    # (a poll would have seen this unconnected socket hung up and reset them).
    spin = ReplySpin(1e-9)
    spin.outs = 3
    wrapped = ssl.create_default_context().wrap_socket(
        socket.socket(), server_hostname="x", do_handshake_on_connect=False
    )
    try:
        spin.wait(wrapped)
        assert (spin.outs, spin.paused) == (3, 0)
        plain = socket.socket()
        spin.wait(plain)  # the same, plain: polled
        assert (spin.outs, spin.paused) == (0, 0)
        plain.close()
    finally:
        wrapped.close()
