"""ShutdownDrain: the clock starts at the signal, runs once, and then ends what is left."""

from __future__ import annotations

import asyncio
import time

from api.shutdown_drain import ShutdownDrain


def test_the_drain_ends_in_flight_requests_once_its_time_is_up() -> None:
    async def run() -> list[float]:
        ended: list[float] = []
        drain = ShutdownDrain(0.2)
        drain.begin()  # before the app is serving: nothing to end yet, nothing armed
        drain.bind(asyncio.get_running_loop(), lambda: ended.append(time.monotonic()))
        started = time.monotonic()
        drain.begin()
        drain.begin()  # a second signal does not start another clock
        await asyncio.sleep(0.1)
        assert ended == []  # in-flight requests still have time
        await asyncio.sleep(0.4)
        return [t - started for t in ended]

    (after,) = asyncio.run(run())
    assert 0.2 <= after < 0.45


def test_a_drain_begun_at_once_ends_in_flight_requests_now() -> None:
    """For an API whose `conveyor serve` was SIGKILLed: no Redis or worker is left to
    finish anything, so its clients get the 503 now rather than in --drain-timeout."""

    async def run() -> tuple[list[float], float]:
        ended: list[float] = []
        drain = ShutdownDrain(30.0)
        drain.bind(asyncio.get_running_loop(), lambda: ended.append(time.monotonic()))
        started = time.monotonic()
        drain.begin(at_once=True)
        await asyncio.sleep(0.1)
        return [t - started for t in ended], drain.remaining()

    (after,), remaining = asyncio.run(run())
    assert after < 0.1 and remaining == 0.0


def test_what_is_left_of_the_drain_bounds_later_shutdown_steps() -> None:
    """Background responses wait only for what is left of the drain after uvicorn's own
    wait, so the whole stop fits the drain (and the orchestrator's grace period)."""

    async def run() -> tuple[float, float, float, bool, bool]:
        drain = ShutdownDrain(0.3)
        drain.bind(asyncio.get_running_loop(), lambda: None)
        before = drain.remaining()
        not_begun = drain.begun
        drain.begin()
        await asyncio.sleep(0.1)
        during = drain.remaining()
        await asyncio.sleep(0.3)
        return before, during, drain.remaining(), not_begun, drain.begun

    before, during, after, not_begun, begun = asyncio.run(run())
    assert before == 0.3 and not not_begun
    assert 0.0 < during < 0.25 and after == 0.0 and begun
