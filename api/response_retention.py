"""Stored responses expire: a periodic purge of those older than the retention.

OpenAI keeps a stored response for 30 days; so do we by default
(`--response-retention-days`, 0 keeps them forever). Every API replica runs
the purge; deleting rows is idempotent, so replicas need no coordination.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from sqlalchemy.exc import SQLAlchemyError

from api.sql import in_session
from conveyor.db.database import Database
from conveyor.db.response_store import purge_responses

logger = logging.getLogger(__name__)

DAY_SECONDS = 86_400


class ResponseRetention:
    def __init__(self, database: Database, retention_days: float, interval: float) -> None:
        self.database = database
        self.retention_seconds = retention_days * DAY_SECONDS
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        # Always: background responses kept only for polling expire whatever the retention.
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def purge_once(self) -> int:
        """Delete every expired response, a bounded batch per transaction."""
        now = int(time.time())
        cutoff = int(now - self.retention_seconds) if self.retention_seconds > 0 else None
        total = 0
        while True:
            gone = await in_session(self.database, lambda s: purge_responses(s, cutoff, now))
            total += gone
            if gone == 0:
                return total

    async def _run(self) -> None:
        while True:
            try:
                purged = await self.purge_once()
                if purged:
                    logger.info("purged %d expired stored responses", purged)
            except SQLAlchemyError as exc:  # the database is down: try again next time
                logger.warning("purging expired responses failed: %s", exc)
            await asyncio.sleep(self.interval)
