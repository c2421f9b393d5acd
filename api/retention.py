"""What expires goes: a periodic purge of stored responses past the retention and of files
past their `expires_after`.

OpenAI keeps a stored response for 30 days; so do we by default
(`--response-retention-days`, 0 keeps them forever). A file lives as long as its upload's
`expires_after` (or its batch's `output_expires_after`) says, or until deleted. Every API
replica runs the purge; deleting rows is idempotent, so replicas need no coordination. A
file's row goes first (committed), then its bytes, as a DELETE /v1/files does, so nothing
ever lists a file whose bytes are missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from sqlalchemy.exc import SQLAlchemyError

from api.sql import in_session
from conveyor.db.database import Database
from conveyor.db.file_store import purge_expired_files
from conveyor.db.response_store import purge_responses
from conveyor.file_storage import FileStorage, delete_unlisted_async

logger = logging.getLogger(__name__)

DAY_SECONDS = 86_400


class Retention:
    def __init__(
        self,
        database: Database,
        storage: FileStorage | None,
        retention_days: float,
        interval: float,
    ) -> None:
        self.database = database
        self.storage = storage  # None: files are not this purge's (tests of responses)
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

    async def purge_files_once(self) -> int:
        """Delete every expired file, rows first, a bounded batch per transaction."""
        if self.storage is None:
            return 0
        total = 0
        while keys := await in_session(self.database, purge_expired_files):
            for key in keys:
                await delete_unlisted_async(self.storage, key)
            total += len(keys)
        return total

    async def _run(self) -> None:
        while True:
            for what, purge in (
                ("stored responses", self.purge_once),
                ("files", self.purge_files_once),
            ):
                try:
                    purged = await purge()
                    if purged:
                        logger.info("purged %d expired %s", purged, what)
                except SQLAlchemyError as exc:  # the database is down: try again next time
                    logger.warning("purging expired %s failed: %s", what, exc)
            await asyncio.sleep(self.interval)
