"""The batch lease on a real redis-server: one holder, kept alive for as long as a run takes."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import redis.asyncio as aioredis

from tests.async_redis import run_with_redis
from workers.batch.lease import BatchLease


def lease_key() -> str:
    return f"test-lease-{uuid.uuid4().hex}"


def test_one_holder_at_a_time_and_release_only_by_the_holder(redis_url: str) -> None:
    async def body(redis: aioredis.Redis) -> None:
        key = lease_key()
        first, second = BatchLease(redis, key, 5.0), BatchLease(redis, key, 5.0)
        assert await first.acquire()
        assert not await second.acquire()
        await second.release()  # not its lease: a no-op
        assert await redis.get(key) == first.token.encode()
        await first.release()
        assert await second.acquire()

    run_with_redis(redis_url, body)


def test_kept_outlives_the_ttl_for_as_long_as_the_block_runs(redis_url: str) -> None:
    """A run longer than the TTL (say, validating a huge file) keeps its lease."""

    async def body(redis: aioredis.Redis) -> None:
        key = lease_key()
        lease = BatchLease(redis, key, 0.3)
        assert await lease.acquire()
        async with lease.kept() as lost:
            await asyncio.sleep(1.2)  # four TTLs
            assert not lost.is_set()
            assert await redis.get(key) == lease.token.encode()
        # After the block nothing renews it: it expires on its own.
        await asyncio.sleep(0.5)
        assert await redis.get(key) is None

    run_with_redis(redis_url, body)


def test_kept_reports_a_lease_taken_by_another_worker(redis_url: str) -> None:
    async def body(redis: aioredis.Redis) -> None:
        key = lease_key()
        lease = BatchLease(redis, key, 0.6)
        assert await lease.acquire()
        async with lease.kept() as lost:
            await redis.set(key, "another-worker", px=30_000)
            await asyncio.wait_for(lost.wait(), timeout=1.0)  # within one renewal tick
        assert await redis.get(key) == b"another-worker"  # left alone

    run_with_redis(redis_url, body)


def test_leaving_kept_stops_a_keeper_whose_renewal_drops_the_cancel(redis_url: str) -> None:
    """A renewal is a redis-py call, which can drop a cancel (conveyor/task_cancel): the
    keeper then renewed on for ever, and leaving the block waited for it for ever."""

    async def body(redis: aioredis.Redis) -> None:
        lease = BatchLease(redis, lease_key(), 0.3)
        assert await lease.acquire()
        renewing = asyncio.Event()
        renewals: list[float] = []

        async def renew_dropping_a_cancel() -> bool:
            renewals.append(time.monotonic())
            renewing.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.3)
            return True

        lease.renew = renew_dropping_a_cancel  # type: ignore[method-assign]

        async def run_until_a_renewal() -> None:
            async with lease.kept():
                await renewing.wait()

        await asyncio.wait_for(run_until_a_renewal(), 3)
        renewed = len(renewals)
        await asyncio.sleep(0.5)  # five renewal ticks
        assert len(renewals) == renewed

    run_with_redis(redis_url, body)
