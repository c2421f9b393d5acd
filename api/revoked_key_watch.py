"""Requests in flight whose API key stops working are ended, not run to their end.

A revoked key (or one whose project is archived) is refused by every replica
within the key cache's TTL, and its batches and background responses are
cancelled; this ends its requests already running on this API process, so a
stolen key's long generations stop within seconds rather than at `max_tokens`.
While any request of a project key is in flight, every KEY_CHECK_SECONDS one
query asks which of their keys stopped working (however many requests: one
query), and each request of such a key ends with a 401 `invalid_api_key`: a
stream with an error event after what it already sent (billed, as the client
got it), any other request with the 401 itself. Its generations are aborted on
the workers as for any request that did not finish. Background responses are
left to api/background_responses.py, which marks them cancelled, and batch lines
to their batch's cancellation (conveyor/db/key_store.py's revocation cancels it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from functools import partial

from api.background_responses import KEY_CHECK_SECONDS
from api.errors import ApiError
from api.reply_router import ReplyRouter
from api.request_record import RequestRecord
from api.sql import in_session
from conveyor.db.database import Database
from conveyor.db.key_store import inactive_keys

logger = logging.getLogger(__name__)


def revoked_error() -> ApiError:
    return ApiError(
        401,
        "the API key of this request was revoked (or its project archived) while the "
        "request ran; it was stopped",
        code="invalid_api_key",
    )


def _watched(record: RequestRecord) -> bool:
    """Background responses and batch lines end through their own cancellation (the
    response marked cancelled; the batch cancelled, its answered lines kept)."""
    return record.background is None and record.principal.batch_id is None


class RevokedKeyWatch:
    """The requests this API process is running, checked against their keys."""

    def __init__(
        self, database: Database, router: ReplyRouter, interval: float = KEY_CHECK_SECONDS
    ) -> None:
        self.database = database
        self.router = router
        self.interval = interval
        # By identity: a record is a mutable dataclass, and two may compare equal.
        self._records: dict[int, RequestRecord] = {}
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def tracking(self, record: RequestRecord) -> Iterator[None]:
        """Watch `record` while its HTTP call runs (its key is known once it is
        authenticated, its readers once its prompts are queued)."""
        self._records[id(record)] = record
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._watch())
        try:
            yield
        finally:
            self._records.pop(id(record), None)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        while self._records:
            await asyncio.sleep(self.interval)
            keyed = {
                ident: record.principal.api_key_id
                for ident, record in self._records.items()
                if record.principal.api_key_id is not None and _watched(record)
            }
            if not keyed:
                continue
            try:
                async with asyncio.timeout(self.interval * 5):
                    gone = await asyncio.shield(
                        in_session(
                            self.database, partial(inactive_keys, key_ids=set(keyed.values()))
                        )
                    )
            except Exception as exc:  # the database is away: keep generating, ask again
                logger.warning("checking in-flight requests' API keys failed: %s", exc)
                continue
            for ident, key_id in keyed.items():
                record = self._records.get(ident)
                if record is None or key_id not in gone:
                    continue
                self._end(record, key_id)

    def _end(self, record: RequestRecord, key_id: str) -> None:
        running = [r for r in record.readers if not (r.finished or r.closed)]
        if not running:
            return
        logger.info(
            "request %s stopped: its API key %s was revoked",
            record.http_request_id or record.request_id,
            key_id,
        )
        for reader in running:
            self.router.end(reader.request_id, revoked_error())
