"""The Celery task that runs one batch, and what it needs per process."""

from __future__ import annotations

import asyncio
import logging
import threading

import httpx
import redis.asyncio as aioredis
from celery import Celery

from conveyor.batch_queue import RUN_BATCH
from conveyor.db.database import Database
from conveyor.file_storage import LocalFileStorage
from conveyor.settings import Settings
from workers.batch.runner import BatchRunner

logger = logging.getLogger(__name__)


def register_tasks(app: Celery, settings: Settings, stopping: threading.Event) -> None:
    """`stopping` is set when the worker shuts down: running batches put down their lines
    (keeping what is recorded) and release their leases, so another worker resumes them."""

    @app.task(name=RUN_BATCH, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def run_batch(batch_id: str) -> None:
        asyncio.run(run_batch_once(settings, batch_id, stopping))


async def run_batch_once(
    settings: Settings, batch_id: str, stopping: threading.Event | None = None
) -> None:
    """Everything a run needs, opened for the run and closed after it."""
    database = Database(settings.resolved_database_url)
    redis = aioredis.from_url(settings.redis_url or "", decode_responses=True)
    timeout = httpx.Timeout(settings.request_timeout + 30, connect=10)
    limits = httpx.Limits(max_connections=settings.batch_max_inflight + 4)
    # Over this host's --uds socket, or TCP; verify and limits belong to the transport.
    transport = httpx.AsyncHTTPTransport(
        uds=settings.batch_api_uds, verify=settings.batch_api_verify, limits=limits
    )
    try:
        async with httpx.AsyncClient(
            base_url=settings.resolved_batch_api_url, timeout=timeout, transport=transport
        ) as client:
            runner = BatchRunner(
                settings,
                database,
                LocalFileStorage(settings.data_dir / "files"),
                redis,
                client,
                stopping,
            )
            await runner.run(batch_id)
    finally:
        await redis.aclose()
        database.close()
