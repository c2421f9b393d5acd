"""One runner per batch: a Redis key with a TTL that the running worker keeps renewing.

Celery delivers at least once and the sweeper re-queues batches that look
orphaned, so the same batch can be handed to two workers; the lease makes
the second one step aside. A worker that dies stops renewing, the key
expires, and the next delivery takes over where the checkpoint left off.
`kept()` renews from its own task for the whole run (validating a 50,000-line
file and writing the result files included), not only while lines run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.exceptions import RedisError

from conveyor.task_cancel import cancel_and_wait

logger = logging.getLogger(__name__)

# Renew or release only what we hold: compare the token first, atomically.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class BatchLease:
    def __init__(self, redis: Redis, key: str, ttl: float) -> None:
        self.redis = redis
        self.key = key
        self.ttl_ms = max(1, int(ttl * 1000))
        self.token = secrets.token_hex(16)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def acquire(self) -> bool:
        return bool(await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))

    async def renew(self) -> bool:
        """False when the lease was lost (expired and taken): the runner must stop at once."""
        return bool(await self._renew(keys=[self.key], args=[self.token, self.ttl_ms]))

    async def release(self) -> None:
        await self._release(keys=[self.key], args=[self.token])

    @contextlib.asynccontextmanager
    async def kept(self) -> AsyncIterator[asyncio.Event]:
        """Renew every third of the TTL while the block runs; the event is set if it is lost.

        A renewal Redis fails is retried at the next tick (the TTL outlasts two
        misses); a renewal Redis refuses means another worker holds the batch now.
        """
        lost = asyncio.Event()

        async def keep() -> None:
            while True:
                await asyncio.sleep(self.ttl_ms / 3000)
                try:
                    held = await self.renew()
                except RedisError as exc:
                    logger.warning("renewing lease %s failed (%s); retrying", self.key, exc)
                    continue
                if not held:
                    lost.set()
                    return

        keeper = asyncio.create_task(keep())
        try:
            yield lost
        finally:
            await cancel_and_wait([keeper])  # one cancel may land in a renewal and be lost
