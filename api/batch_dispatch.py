"""Hand a new batch to the batch workers (a Celery task sent by name through Redis)."""

from __future__ import annotations

import logging

import anyio.to_thread
import redis
from celery import Celery

from conveyor.batch_queue import celery_app, queue_batch
from conveyor.settings import Settings

logger = logging.getLogger(__name__)


class BatchDispatcher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._app: Celery | None = None
        self._redis: redis.Redis | None = None

    async def dispatch(self, batch_id: str) -> None:
        """Best effort: a batch whose task could not be sent is found by the workers' sweeper."""
        try:
            await anyio.to_thread.run_sync(self._send, batch_id)
        except Exception:
            logger.exception("could not queue batch %s; the sweeper will pick it up", batch_id)

    def _send(self, batch_id: str) -> None:
        if self._app is None:
            self._app = celery_app(self.settings)
        if self._redis is None:
            # Retried once on a new connection after a Redis restart (as the API's client).
            self._redis = redis.Redis.from_url(
                self.settings.redis_url or "", retry_on_error=[redis.ConnectionError]
            )
        queue_batch(self._app, self._redis, self.settings, batch_id)
