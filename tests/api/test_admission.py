"""Admission against the real Redis limiter: a caller cancelled mid-admit leaks no tokens."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import redis.asyncio as aioredis

from api.admission import admit_or_release
from api.rate_limiter import RateDecision, RateLimiter, RateLimits
from conveyor.bus import BusNames
from tests.async_redis import run_with_redis

NAMES = BusNames(f"test-adm-{uuid.uuid4().hex[:8]}")


class HeldLimiter(RateLimiter):
    """The real limiter, whose admit waits for a go-ahead first (to cancel the caller mid-call)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        super().__init__(redis, NAMES)
        self.entered = asyncio.Event()
        self.go = asyncio.Event()

    async def admit(self, key_id: str, limits: RateLimits, **call: Any) -> RateDecision:
        self.entered.set()
        await self.go.wait()
        return await super().admit(key_id, limits, **call)


def test_cancelled_caller_gets_its_tokens_released(redis_url: str) -> None:
    async def body(redis: aioredis.Redis) -> None:
        limiter = HeldLimiter(redis)
        limits = RateLimits(rpm=10, tpm=1000)
        key = uuid.uuid4().hex
        caller = asyncio.create_task(
            admit_or_release(limiter, key, limits, request_id="r1", tokens=600)
        )
        await limiter.entered.wait()
        caller.cancel()
        await asyncio.gather(caller, return_exceptions=True)
        assert caller.cancelled()
        limiter.go.set()  # the script now runs and reserves 600 tokens
        for _ in range(100):
            state = await limiter.peek(key, limits)
            if state.remaining_tokens == 1000 and state.remaining_requests == 9:
                break
            await asyncio.sleep(0.02)
        # The request counts (it was made), its reservation does not.
        assert state.remaining_requests == 9
        assert state.remaining_tokens == 1000

    run_with_redis(redis_url, body)


def test_a_caller_that_stays_keeps_its_reservation(redis_url: str) -> None:
    async def body(redis: aioredis.Redis) -> None:
        limiter = HeldLimiter(redis)
        limiter.go.set()
        limits = RateLimits(rpm=10, tpm=1000)
        key = uuid.uuid4().hex
        decision = await admit_or_release(limiter, key, limits, request_id="r1", tokens=600)
        assert decision.allowed
        state = await limiter.peek(key, limits)
        assert state.remaining_tokens == 400 and state.remaining_requests == 9

    run_with_redis(redis_url, body)
