"""Run an async test body against the tests' real redis-server with fresh clients."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis

T = TypeVar("T")


def run_with_redis(
    redis_url: str, body: Callable[[aioredis.Redis], Awaitable[T]], clients: int = 1
) -> T:
    """Run `body` with a fresh client (or a list of `clients` of them), closed afterwards."""

    async def main() -> T:
        conns = [aioredis.Redis.from_url(redis_url) for _ in range(clients)]
        try:
            return await body(conns[0] if clients == 1 else conns)  # type: ignore[arg-type]
        finally:
            for conn in conns:
                await conn.aclose()

    return asyncio.run(main())
