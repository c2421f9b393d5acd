"""The API's Redis client: a burst waits for a pooled connection instead of failing."""

from __future__ import annotations

import asyncio

from api.redis_client import api_redis


def test_a_command_waits_for_a_free_connection(redis_url: str) -> None:
    """With every connection busy, the next command waits and then runs; redis-py's
    default pool raised "Too many connections", which the API answered as a 503."""

    async def run() -> tuple[bool, bool]:
        client = api_redis(redis_url, max_connections=3)
        pool = client.connection_pool
        try:
            busy = [await pool.get_connection() for _ in range(3)]
            ping = asyncio.ensure_future(client.ping())
            await asyncio.sleep(0.3)
            waited = not ping.done()
            await pool.release(busy.pop())
            answered = await asyncio.wait_for(ping, 5)
            for connection in busy:
                await pool.release(connection)
            return waited, answered
        finally:
            await client.aclose()

    assert asyncio.run(run()) == (True, True)
