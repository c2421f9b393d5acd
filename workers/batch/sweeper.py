"""Find batches nobody is running and queue them again.

A batch whose worker died holds no lease once its TTL runs out; the Celery
message that started it may be gone (acked) or parked until its visibility
timeout. Every batch worker process runs this sweep, so such a batch is
picked up again within `batch_sweep_interval` + `batch_lease_ttl` seconds.
A "queued" mark, set whenever a batch's task is sent (by the API or here)
and cleared by the runner that takes it, keeps a batch that is merely
waiting in the Celery queue from being queued again by every sweep.
"""

from __future__ import annotations

import logging
import threading

import redis
from celery import Celery

from conveyor.batch_queue import queue_batch
from conveyor.bus import BusNames
from conveyor.db.batch_store import active_batch_ids
from conveyor.db.database import Database
from conveyor.settings import Settings

logger = logging.getLogger(__name__)


class BatchSweeper:
    def __init__(self, settings: Settings, app: Celery) -> None:
        self.settings = settings
        self.app = app
        self.names = BusNames(settings.redis_prefix)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="batch-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        client = redis.Redis.from_url(self.settings.redis_url or "", decode_responses=True)
        database = Database(self.settings.resolved_database_url)
        try:
            while not self._stop.wait(self.settings.batch_sweep_interval):
                try:
                    self.sweep(client, database)
                except Exception:
                    logger.exception("batch sweep failed; trying again next interval")
        finally:
            database.close()
            client.close()

    def sweep(self, client: redis.Redis, database: Database) -> list[str]:
        """Queue every active batch without a live lease; returns the ids queued."""
        with database.session() as session:
            batch_ids = active_batch_ids(session)
        queued = []
        for batch_id in batch_ids:
            if client.exists(self.names.batch_lease(batch_id)):
                continue
            if queue_batch(self.app, client, self.settings, batch_id):
                queued.append(batch_id)
        if queued:
            logger.info("re-queued %d batch(es) nobody was running: %s", len(queued), queued)
        return queued
