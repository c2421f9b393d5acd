"""The Redis rate limiter against a real redis-server: exact counts under concurrency and
across replicas, the sliding window, token reservations and OpenAI's header format."""

from __future__ import annotations

import asyncio
import uuid
from typing import TypeVar

import pytest
import redis.asyncio as aioredis

from api.rate_limiter import RateDecision, RateLimiter, RateLimits, format_duration
from conveyor.bus import BusNames
from tests.async_redis import run_with_redis

T = TypeVar("T")
NAMES = BusNames(f"test-rl-{uuid.uuid4().hex[:8]}")


def new_key() -> str:
    return uuid.uuid4().hex


def rid() -> str:
    return uuid.uuid4().hex


def test_rpm_rejects_past_the_limit_and_keys_are_independent(redis_url: str) -> None:
    async def body(redis: aioredis.Redis) -> None:
        limiter = RateLimiter(redis, NAMES)
        limits = RateLimits(rpm=2, tpm=None)
        key, other = new_key(), new_key()
        first = await limiter.admit(key, limits, request_id=rid(), tokens=5)
        assert first.allowed and first.remaining_requests == 1
        assert (await limiter.admit(key, limits, request_id=rid(), tokens=5)).allowed
        third = await limiter.admit(key, limits, request_id=rid(), tokens=5)
        assert not third.allowed and not third.too_large
        assert third.remaining_requests == 0
        assert third.retry_after is not None and 0 < third.retry_after <= 60
        assert third.reset_requests is not None and 59 < third.reset_requests <= 60
        headers = third.headers()
        assert headers["retry-after"] == "60"
        assert headers["x-ratelimit-limit-requests"] == "2"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert "x-ratelimit-limit-tokens" not in headers
        # A rejected request records nothing.
        assert (await limiter.peek(key, limits)).remaining_requests == 0
        assert await redis.zcard(NAMES.rate_limit(key, "admitted")) == 2
        assert (await limiter.admit(other, limits, request_id=rid(), tokens=5)).allowed

    run_with_redis(redis_url, body)


def test_concurrent_admits_are_exact_within_and_across_replicas(redis_url: str) -> None:
    async def body(conns: list[aioredis.Redis]) -> None:
        limits = RateLimits(rpm=20, tpm=None)
        one = RateLimiter(conns[0], NAMES)
        key = new_key()
        results = await asyncio.gather(
            *(one.admit(key, limits, request_id=rid(), tokens=1) for _ in range(50))
        )
        assert sum(r.allowed for r in results) == 20

        # Two "replicas": separate limiters on separate clients share one budget.
        replicas = [RateLimiter(conn, NAMES) for conn in conns]
        key = new_key()
        results = await asyncio.gather(
            *(replicas[i % 2].admit(key, limits, request_id=rid(), tokens=1) for i in range(50))
        )
        assert sum(r.allowed for r in results) == 20
        assert {r.remaining_requests for r in results if r.allowed} == set(range(20))

    run_with_redis(redis_url, body, clients=2)


def test_sliding_window_readmits_after_entries_age_out(redis_url: str) -> None:
    async def body(redis: aioredis.Redis) -> None:
        limiter = RateLimiter(redis, NAMES, window=0.6)
        limits = RateLimits(rpm=2, tpm=None)
        key = new_key()
        assert (await limiter.admit(key, limits, request_id=rid(), tokens=0)).allowed
        await asyncio.sleep(0.3)
        assert (await limiter.admit(key, limits, request_id=rid(), tokens=0)).allowed
        refused = await limiter.admit(key, limits, request_id=rid(), tokens=0)
        assert not refused.allowed
        # Only the first entry must age out: about 0.3 s, not a whole window.
        assert refused.retry_after is not None and 0.1 < refused.retry_after < 0.45
        await asyncio.sleep(refused.retry_after + 0.05)
        # Sliding, not fixed windows: one slot is back, the second entry still counts.
        assert (await limiter.admit(key, limits, request_id=rid(), tokens=0)).allowed
        assert not (await limiter.admit(key, limits, request_id=rid(), tokens=0)).allowed
        await asyncio.sleep(0.7)
        # Idle keys vanish entirely.
        assert await redis.exists(*(NAMES.rate_limit(key, p) for p in ("admitted", "total"))) == 0

    run_with_redis(redis_url, body)


def test_token_reservations_settle_and_too_large(redis_url: str) -> None:
    async def body(redis: aioredis.Redis) -> None:
        limiter = RateLimiter(redis, NAMES)
        limits = RateLimits(rpm=None, tpm=100)
        key = new_key()
        a, b = rid(), rid()
        first = await limiter.admit(key, limits, request_id=a, tokens=60)
        assert first.allowed and first.remaining_tokens == 40
        assert first.limit_requests is None and first.remaining_requests is None
        refused = await limiter.admit(key, limits, request_id=b, tokens=50)
        assert not refused.allowed and not refused.too_large
        assert refused.retry_after is not None and 59 < refused.retry_after <= 60

        # The request used less than it reserved: the difference is available again.
        await limiter.settle(key, a, 20)
        assert (await limiter.peek(key, limits)).remaining_tokens == 80
        assert (await limiter.admit(key, limits, request_id=b, tokens=50)).allowed
        # ... or more: later requests wait for it.
        await limiter.settle(key, b, 70)
        state = await limiter.peek(key, limits)
        assert state.remaining_tokens == 10 and state.allowed
        await limiter.settle(key, b, 90)
        state = await limiter.peek(key, limits)
        assert state.remaining_tokens == 0 and not state.allowed
        # Settling an unknown (or aged-out) request changes nothing.
        await limiter.settle(key, rid(), 1000)
        assert (await limiter.peek(key, limits)).remaining_tokens == 0

        huge = await limiter.admit(new_key(), limits, request_id=rid(), tokens=101)
        assert huge.too_large and not huge.allowed and huge.retry_after is None
        assert "retry-after" not in huge.headers()

    run_with_redis(redis_url, body)


def test_a_request_without_max_tokens_holds_what_it_may_use_of_the_budget_left(
    redis_url: str,
) -> None:
    async def body(redis: aioredis.Redis) -> None:
        limiter = RateLimiter(redis, NAMES)
        limits = RateLimits(rpm=None, tpm=100)
        key = new_key()
        a, b, c = rid(), rid(), rid()
        # It may use 30: it holds 30.
        first = await limiter.admit(key, limits, request_id=a, tokens=10, most=30)
        assert first.allowed and first.reserved_tokens == 30 and first.remaining_tokens == 70
        # It may use 500: never too large for that, it holds the 70 left.
        second = await limiter.admit(key, limits, request_id=b, tokens=10, most=500)
        assert second.allowed and second.reserved_tokens == 70 and second.remaining_tokens == 0
        # A burst's next one waits, however small.
        assert not (await limiter.admit(key, limits, request_id=c, tokens=1, most=500)).allowed
        # Settled to what it used, the rest is free again; past the budget, the window
        # says so.
        await limiter.settle(key, b, 400)
        over = await limiter.admit(key, limits, request_id=c, tokens=1)
        assert (over.used_tokens, over.remaining_tokens) == (430, 0)
        await limiter.settle(key, b, 25)
        third = await limiter.admit(key, limits, request_id=c, tokens=5, most=500)
        assert third.allowed and third.reserved_tokens == 45
        # A request stating its max_tokens holds just that; a stated need too large stays so.
        other = new_key()
        stated = await limiter.admit(other, limits, request_id=rid(), tokens=40)
        assert stated.reserved_tokens == 40
        huge = await limiter.admit(other, limits, request_id=rid(), tokens=101, most=500)
        assert huge.too_large
        # No tpm: nothing is held.
        rpm_only = RateLimits(rpm=5, tpm=None)
        free = await limiter.admit(other, rpm_only, request_id=rid(), tokens=9, most=99)
        assert free.reserved_tokens == 9

    run_with_redis(redis_url, body)


def test_token_retry_after_waits_for_enough_entries(redis_url: str) -> None:
    async def body(redis: aioredis.Redis) -> None:
        limiter = RateLimiter(redis, NAMES, window=2.0)
        limits = RateLimits(rpm=10, tpm=100)
        key = new_key()
        assert (await limiter.admit(key, limits, request_id=rid(), tokens=30)).allowed
        await asyncio.sleep(0.5)
        assert (await limiter.admit(key, limits, request_id=rid(), tokens=60)).allowed
        # 20 tokens need the first entry gone (~1.5 s); 50 need both (~2 s).
        small = await limiter.admit(key, limits, request_id=rid(), tokens=20)
        big = await limiter.admit(key, limits, request_id=rid(), tokens=50)
        assert small.retry_after is not None and big.retry_after is not None
        assert 0.5 < small.retry_after <= 1.5 < big.retry_after <= 2.0
        assert big.reset_tokens == big.reset_requests == big.retry_after
        assert big.remaining_requests == 8

    run_with_redis(redis_url, body)


def test_many_entries_are_walked_and_trimmed_in_batches(redis_url: str) -> None:
    """More entries than the script's batch sizes (100 walked, 500 trimmed per step)."""

    async def body(redis: aioredis.Redis) -> None:
        limiter = RateLimiter(redis, NAMES, window=1.0)
        limits = RateLimits(rpm=1000, tpm=600)
        key = new_key()
        for _ in range(12):
            batch = await asyncio.gather(
                *(limiter.admit(key, limits, request_id=rid(), tokens=1) for _ in range(50))
            )
            assert all(d.allowed for d in batch)
        refused = await limiter.admit(key, limits, request_id=rid(), tokens=150)
        assert not refused.allowed and refused.retry_after is not None
        assert refused.reset_tokens is not None and 0 < refused.retry_after < refused.reset_tokens
        await asyncio.sleep(0.2)
        # Keeps the keys alive while the 600 older entries age out.
        assert (await limiter.admit(key, limits, request_id=rid(), tokens=0)).allowed
        await asyncio.sleep(0.9)
        after = await limiter.admit(key, limits, request_id=rid(), tokens=150)
        assert after.allowed
        assert after.remaining_tokens == 450 and after.remaining_requests == 998
        assert await redis.hlen(NAMES.rate_limit(key, "tokens")) == 2

    run_with_redis(redis_url, body)


def test_unlimited_always_admits_without_headers(redis_url: str) -> None:
    async def body(redis: aioredis.Redis) -> None:
        limiter = RateLimiter(redis, NAMES)
        limits = RateLimits(rpm=None, tpm=None)
        key = new_key()
        for _ in range(5):
            decision = await limiter.admit(key, limits, request_id=rid(), tokens=10**9)
            assert decision.allowed and decision.headers() == {}
        assert (await limiter.peek(key, limits)).headers() == {}
        assert await redis.exists(NAMES.rate_limit(key, "admitted")) == 0

    run_with_redis(redis_url, body)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.02, "20ms"),
        (0.0201, "21ms"),
        (0.999, "999ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (8.64, "8.64s"),
        (59.9994, "1m0s"),
        (360, "6m0s"),
        (90.25, "1m30.25s"),
        (3723, "1h2m3s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_headers_format() -> None:
    refused = RateDecision(
        allowed=False,
        limit_requests=60,
        remaining_requests=0,
        reset_requests=0.25,
        limit_tokens=1000,
        remaining_tokens=900,
        reset_tokens=360.0,
        retry_after=0.25,
    )
    assert refused.headers() == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "250ms",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "6m0s",
        "retry-after": "1",
    }
    admitted = RateDecision(True, None, None, None, 10, 5, 1.5, None)
    assert admitted.headers() == {
        "x-ratelimit-limit-tokens": "10",
        "x-ratelimit-remaining-tokens": "5",
        "x-ratelimit-reset-tokens": "1.5s",
    }


def test_limits_and_tokens_are_validated() -> None:
    with pytest.raises(ValueError):
        RateLimits(rpm=-1, tpm=None)
    with pytest.raises(ValueError):
        RateLimiter(aioredis.Redis(), NAMES, window=0)
