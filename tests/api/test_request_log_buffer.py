"""RequestLogBuffer against a fake writer: batching, retry order, the memory bound, shutdown.

The writer is a plain function run in a worker thread, so a test can hold it
inside a write (a threading.Event) and check what the event loop and the
requests do meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import pytest

from api.request_log_buffer import RequestLogBuffer

T = TypeVar("T")
HOUR = 3600.0  # a flush interval the timer never reaches within a test


class FakeWriter:
    """Records each batch it is given; can fail the next N calls or hold each call at a gate."""

    def __init__(self, *, fail: int = 0, gated: bool = False) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.used: list[dict[str, int]] = []
        self.calls = 0
        self.fail = fail
        self.entered = threading.Event()
        self.gate = threading.Event() if gated else None
        self.released_by_test: list[bool] = []

    def __call__(self, rows: Sequence[Mapping[str, Any]], used: Mapping[str, int]) -> None:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            # Bounded so a loop blocked by the write fails the test instead of hanging it.
            self.released_by_test.append(self.gate.wait(timeout=5))
        if self.fail:
            self.fail -= 1
            raise ConnectionError("database unreachable")
        self.batches.append([dict(row) for row in rows])
        self.used.append(dict(used))

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [row for batch in self.batches for row in batch]


def row(n: int) -> dict[str, Any]:
    return {"request_id": f"req-{n}"}


def rows(*ns: int) -> list[dict[str, Any]]:
    return [row(n) for n in ns]


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(main())


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def test_rows_are_written_in_batches_on_the_interval() -> None:
    """`add` only queues; the timer writes everything gathered as one batch per flush."""
    writer = FakeWriter()

    async def main() -> None:
        buffer = RequestLogBuffer(writer, flush_interval=0.05, max_rows=100)
        buffer.start()
        for n in (1, 2, 3):
            buffer.add(row(n))
        assert writer.calls == 0 and len(buffer) == 3
        await wait_until(lambda: len(writer.batches) == 1)
        buffer.add(row(4))
        buffer.add(row(5))
        await wait_until(lambda: len(writer.batches) == 2)
        await buffer.stop()
        assert writer.batches == [rows(1, 2, 3), rows(4, 5)]
        assert buffer.written == 5 and len(buffer) == 0
        # An empty buffer costs no write at all.
        assert writer.calls == 2

    run(main)


def test_stop_flushes_everything_left() -> None:
    """The SIGTERM path: rows the timer never reached are written by `stop()`."""
    writer = FakeWriter()

    async def main() -> None:
        buffer = RequestLogBuffer(writer, flush_interval=HOUR, max_rows=100)
        buffer.start()
        for n in range(4):
            buffer.add(row(n))
        await asyncio.sleep(0.02)
        assert writer.calls == 0
        await buffer.stop()
        assert writer.batches == [rows(0, 1, 2, 3)]
        assert len(buffer) == 0

    run(main)


def test_failed_write_keeps_rows_and_retries_them_first(caplog: pytest.LogCaptureFixture) -> None:
    """A database error loses nothing: the rows go back ahead of newer ones, in order."""
    writer = FakeWriter(fail=1)

    async def main() -> None:
        buffer = RequestLogBuffer(writer, flush_interval=HOUR, max_rows=100)
        buffer.add(row(1))
        buffer.add(row(2))
        with caplog.at_level(logging.ERROR, logger="api.request_log_buffer"):
            await buffer.flush()
        assert "will retry" in caplog.text
        assert writer.batches == [] and len(buffer) == 2 and buffer.written == 0
        buffer.add(row(3))
        await buffer.flush()
        assert writer.batches == [rows(1, 2, 3)]
        assert buffer.written == 3 and buffer.dropped == 0

    run(main)


def test_key_uses_without_rows_are_written_and_kept_through_a_failure() -> None:
    """A files or batches call logs no row: its key's use is written with the next flush,
    the latest per key, and survives a failed write like the rows."""
    writer = FakeWriter(fail=1)

    async def main() -> None:
        buffer = RequestLogBuffer(writer, flush_interval=HOUR, max_rows=100)
        buffer.touch("key_a", 10)
        buffer.touch("key_a", 7)
        buffer.touch("key_b", 3)
        await buffer.flush()  # fails
        assert writer.used == []
        buffer.touch("key_a", 12)
        await buffer.flush()
        assert writer.used == [{"key_a": 12, "key_b": 3}] and writer.batches == [[]]
        await buffer.flush()  # nothing new: no write
        assert writer.calls == 2

    run(main)


def test_max_rows_drops_oldest_and_counts_them() -> None:
    writer = FakeWriter()

    async def main() -> None:
        buffer = RequestLogBuffer(writer, flush_interval=HOUR, max_rows=3)
        for n in range(1, 6):
            buffer.add(row(n))
        assert len(buffer) == 3 and buffer.dropped == 2
        await buffer.stop()
        assert writer.rows == rows(3, 4, 5)

    run(main)


def test_requeued_rows_stay_within_max_rows() -> None:
    """Rows put back after a failure plus rows that arrived meanwhile: the oldest go first."""
    writer = FakeWriter(fail=1, gated=True)

    async def main() -> None:
        buffer = RequestLogBuffer(writer, flush_interval=HOUR, max_rows=4)
        buffer.add(row(1))
        buffer.add(row(2))
        buffer.add(row(3))
        flushing = asyncio.create_task(buffer.flush())
        await wait_until(writer.entered.is_set)
        for n in (4, 5, 6):
            buffer.add(row(n))
        assert writer.gate is not None
        writer.gate.set()
        await flushing
        assert len(buffer) == 4 and buffer.dropped == 2
        await buffer.flush()
        assert writer.rows == rows(3, 4, 5, 6)

    run(main)


def test_a_slow_database_never_slows_a_request() -> None:
    """While a write hangs in the database, `add` returns at once and the loop keeps running."""
    writer = FakeWriter(gated=True)

    async def main() -> None:
        buffer = RequestLogBuffer(writer, flush_interval=0.01, max_rows=100_000)
        buffer.start()
        buffer.add(row(0))
        await wait_until(writer.entered.is_set)

        started = time.perf_counter()
        for n in range(1, 1001):
            buffer.add(row(n))
        adding = time.perf_counter() - started
        started = time.perf_counter()
        await asyncio.sleep(0.01)
        sleeping = time.perf_counter() - started
        # Generous bounds: a blocked loop would take the writer's full 5 s gate timeout.
        assert adding < 1.0
        assert sleeping < 1.0
        assert writer.calls == 1  # the flush is still stuck in its first write
        assert len(buffer) == 1000

        assert writer.gate is not None
        writer.gate.set()
        await buffer.stop()
        assert writer.released_by_test == [True] * writer.calls
        assert writer.rows == rows(*range(1001))

    run(main)


def test_stop_during_a_flush_loses_nothing() -> None:
    """SIGTERM mid-write: the write in flight is let finish, and a failed one is retried."""
    writer = FakeWriter(fail=1, gated=True)

    async def main() -> None:
        buffer = RequestLogBuffer(writer, flush_interval=0.01, max_rows=100)
        buffer.start()
        buffer.add(row(1))
        await wait_until(writer.entered.is_set)
        buffer.add(row(2))
        stopping = asyncio.create_task(buffer.stop())
        await asyncio.sleep(0.05)
        assert writer.calls == 1  # nothing else writes while the first write is in flight
        assert writer.gate is not None
        writer.gate.set()
        await stopping
        assert writer.batches == [rows(1, 2)]
        assert len(buffer) == 0 and buffer.dropped == 0

    run(main)
