"""cancel_and_wait stops tasks that drop a cancel, as asyncio.wait_for does on Python 3.11."""

from __future__ import annotations

import asyncio
import gc
import sys

import pytest

from conveyor.task_cancel import cancel_and_wait


async def _ticks(inner: asyncio.Queue[asyncio.Future[None]], seen: list[int]) -> None:
    """A loop of operations behind `asyncio.wait_for`, as redis-py runs each command."""
    while True:
        operation: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await inner.put(operation)
        await asyncio.wait_for(operation, timeout=10)
        seen.append(1)


async def _cancel_as_the_operation_completes(
    task: asyncio.Task[None], inner: asyncio.Queue[asyncio.Future[None]]
) -> None:
    operation = await inner.get()
    operation.set_result(None)
    task.cancel()  # in the same loop turn: 3.11's wait_for returns the result instead


def test_python_3_11_wait_for_drops_a_cancel_that_lands_as_its_operation_completes() -> None:
    """The reason for cancel_and_wait; on 3.12+ wait_for is fixed and the cancel holds."""

    async def body() -> bool:
        inner: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()
        task = asyncio.create_task(_ticks(inner, []))
        await _cancel_as_the_operation_completes(task, inner)
        await asyncio.sleep(0.05)
        survived = not task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return survived

    assert asyncio.run(body()) is (sys.version_info < (3, 12))


def test_a_task_that_drops_its_cancel_is_cancelled_again_until_it_stops() -> None:
    async def body() -> None:
        inner: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()
        seen: list[int] = []
        task = asyncio.create_task(_ticks(inner, seen))
        operation = await inner.get()
        stopping = asyncio.create_task(cancel_and_wait([task], recancel_every=0.05))
        operation.set_result(None)  # its first cancel lands as this completes
        await asyncio.wait_for(stopping, 2)
        assert task.cancelled()
        assert len(seen) == (1 if sys.version_info < (3, 12) else 0)

    asyncio.run(body())


def test_errors_and_results_are_retrieved_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def fail() -> None:
        raise RuntimeError("boom")

    async def body() -> None:
        failed = asyncio.create_task(fail())
        finished = asyncio.create_task(asyncio.sleep(0, result=3))
        sleeping = asyncio.create_task(asyncio.sleep(30))
        await asyncio.sleep(0.01)
        await cancel_and_wait([failed, finished, sleeping])
        assert failed.done() and finished.result() == 3 and sleeping.cancelled()
        await cancel_and_wait([])

    asyncio.run(body())
    gc.collect()  # an unretrieved error is logged when its task is collected
    assert "never retrieved" not in caplog.text
