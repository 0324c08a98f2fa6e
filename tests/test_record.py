from __future__ import annotations

import asyncio
import threading
import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async

import django_perfkit
from django_perfkit.record import RequestRecord, current_record, record_request, timer


def test_no_record_outside_a_request() -> None:
    assert current_record() is None


def test_record_request_opens_and_closes() -> None:
    with record_request() as rec:
        assert current_record() is rec
        assert rec.finished is None
    assert current_record() is None
    assert rec.finished is not None
    assert rec.duration >= 0


def test_timer_as_context_manager_adds_up() -> None:
    with record_request() as rec:
        for _ in range(3):
            with django_perfkit.timer("render"):
                time.sleep(0.001)
    section = rec.sections["render"]
    assert section.count == 3
    assert section.time >= 0.003


def test_timer_as_decorator_sync_and_async() -> None:
    @timer("pricing")
    def price(x: int) -> int:
        return x * 2

    @timer("fetch")
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    with record_request() as rec:
        assert price(2) == 4
        assert async_to_sync(fetch)(1) == 2
    assert rec.sections["pricing"].count == 1
    assert rec.sections["fetch"].count == 1
    assert asyncio.iscoroutinefunction(fetch)


def test_timer_outside_a_request_records_nothing() -> None:
    with timer("lonely"):
        pass
    assert current_record() is None


@pytest.mark.parametrize("label", ["", None, 3])
def test_timer_needs_a_label(label: object) -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        timer(label)  # type: ignore[arg-type]


def test_records_are_isolated_between_threads() -> None:
    seen: dict[str, RequestRecord | None] = {}

    def other_thread() -> None:
        seen["other"] = current_record()

    with record_request():
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
    # A plain thread does not inherit the context: it is not part of the request.
    assert seen["other"] is None


def test_sync_to_async_hops_keep_the_record() -> None:
    def in_thread() -> RequestRecord | None:
        with timer("in-thread"):
            return current_record()

    with record_request() as rec:
        assert async_to_sync(sync_to_async(in_thread))() is rec
    assert rec.sections["in-thread"].count == 1


async def test_concurrent_tasks_have_their_own_records() -> None:
    async def request(label: str) -> RequestRecord:
        with record_request() as rec:
            await asyncio.sleep(0.01)
            with timer(label):
                await asyncio.sleep(0)
            assert current_record() is rec
        return rec

    a, b = await asyncio.gather(request("a"), request("b"))
    assert a is not b
    assert set(a.sections) == {"a"}
    assert set(b.sections) == {"b"}
