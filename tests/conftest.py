from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis
from asgiref.sync import SyncToAsync
from django.conf import settings
from django.db import connections

from django_perfkit.conf import reset
from tests.redis_servers import PrivateCluster


def _delete_test_keys() -> None:
    # Only our own keys, in our own database: never FLUSHALL, never another prefix.
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        for pattern in (f"{settings.KEY_PREFIX}:*", f"{settings.KEY_PREFIX}-*"):
            batch = list(client.scan_iter(match=pattern, count=1000))
            if batch:
                client.delete(*batch)
    finally:
        client.close()


@pytest.fixture(autouse=True)
def _close_async_db_connections(request: pytest.FixtureRequest) -> Iterator[None]:
    """Async tests run their ORM calls in asgiref's shared thread: close its
    connections afterwards, or the test database cannot be dropped."""
    yield
    if inspect.iscoroutinefunction(request.function):
        # sync_to_async outside any async_to_sync runs in this one executor.
        SyncToAsync.single_thread_executor.submit(connections.close_all).result()


@pytest.fixture(autouse=True)
def _clean_perfkit_state() -> Iterator[None]:
    """Each test starts with fresh settings, a fresh gateway and no perfkit keys."""
    from django_perfkit.cache import entries
    from django_perfkit.profiler import sampling

    reset()
    sampling.forget()
    entries._warned.clear()  # each test sees the warnings it causes
    _delete_test_keys()
    yield
    reset()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[PrivateCluster]:
    """A private three-node Redis Cluster, for this test only."""
    private = PrivateCluster()
    try:
        private.start(str(tmp_path))
        yield private
    finally:
        private.stop()


@pytest.fixture(autouse=True, scope="session")
def _no_fleet_flush_thread() -> None:
    """Tests that write PERFKIT from scratch turn fleet stats on; the process's
    recorder must not start its flush thread then, which would write into
    whatever Redis a later test configures (a black-holed one, say)."""
    from django_perfkit.fleet.stats import recorder

    recorder.background = False


@pytest.fixture(autouse=True, scope="session")
def _delete_keys_at_the_end() -> Iterator[None]:
    """Leave nothing under the suite's prefix in the shared Redis (tokens live a day)."""
    yield
    _delete_test_keys()


@pytest_asyncio.fixture
async def _close_gateway_async_client() -> AsyncIterator[None]:
    """redis.asyncio connections belong to the test's event loop: close them in it."""
    yield
    from django_perfkit.redis import gateway

    if gateway._gateway is not None:
        await gateway._gateway.aclose()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.function):
            item.fixturenames.append("_close_gateway_async_client")
