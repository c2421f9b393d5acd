"""The API process's Redis client: how it connects, times out, retries and shares
connections, in one place.

A connect or a read that cannot succeed fails in seconds, not at the OS's TCP timeouts:
a request waiting on Redis must reach its own error (api/reply_router.py). The API sends
no blocking commands; pub/sub reads pass their own timeout. A pooled connection to a
Redis that has since restarted fails once on its next use: that command is retried on a
new connection, at once; a timeout is not retried (redis-py's default retry, timeouts
too, with backoff, made a hung Redis cost each command two read timeouts). A burst of
requests waits its turn for a connection, where redis-py's default pool (100, then an
error) answered those past the 100th with a 503 "Redis unavailable" from a healthy Redis.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

# Connections one API process keeps to Redis at most; a command that finds them all in
# use waits up to this long for one (then a 503, as when Redis is down).
POOL_CONNECTIONS = 512
POOL_WAIT_SECONDS = 10.0


# A connect, and a command's reply, wait this long before the command fails.
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 10.0


def api_redis(
    url: str,
    max_connections: int = POOL_CONNECTIONS,
    read_timeout: float = READ_TIMEOUT_SECONDS,
) -> aioredis.Redis:
    """A client that owns its pool (closed with the client)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_WAIT_SECONDS,
        decode_responses=True,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        socket_timeout=read_timeout,
        # Once, at once, and only a connection error (a stale connection): redis-py's
        # default also retries timeouts, with backoff, which doubled every wait on a hung
        # Redis (20 s where the read timeout says 10).
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return aioredis.Redis.from_pool(pool)
