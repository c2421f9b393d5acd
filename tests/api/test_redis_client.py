"""The API's Redis client: a burst waits for a pooled connection instead of failing, a
hung Redis fails a command once in its read timeout, a restarted one costs no command."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.redis_client import api_redis
from conveyor.embedded_redis import EmbeddedRedis


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


def test_a_hung_redis_fails_a_command_in_one_read_timeout() -> None:
    """A stopped redis-server accepts connections and never answers: the command fails
    after one read timeout; redis-py's default retry (timeouts too) made it two."""
    read_timeout = 2.0

    async def run(url: str, pid: int) -> float:
        client = api_redis(url, read_timeout=read_timeout)
        try:
            await client.ping()
            os.kill(pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(RedisTimeoutError):
                    await client.ping()
                return time.monotonic() - started
            finally:
                os.kill(pid, signal.SIGCONT)
        finally:
            await client.aclose()

    with EmbeddedRedis() as server:
        assert server.process is not None
        waited = asyncio.run(run(server.url, server.process.pid))
    assert read_timeout * 0.9 < waited < read_timeout * 1.75


def test_a_restarted_redis_costs_no_command() -> None:
    """A pooled connection to a Redis that has since restarted fails on its next use; that
    command is retried once on a new connection instead of failing the request."""

    async def run(server: EmbeddedRedis) -> list[bool]:
        client = api_redis(server.url)
        try:
            await client.set("before", 1)
            server.restart()
            return [await client.ping(), await client.get("before") is None]
        finally:
            await client.aclose()

    with EmbeddedRedis() as server:
        assert asyncio.run(run(server)) == [True, True]
