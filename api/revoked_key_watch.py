"""Work running under an API key stops when the key stops working.

A revoked key (or one whose project is archived) is refused by every replica
within the key cache's TTL; this stops the work it already started on this API
process, so a stolen key's long generations stop within seconds rather than at
`max_tokens`, and its background responses are cancelled. Two kinds
are watched, with one query for both, every KEY_CHECK_SECONDS while any runs
(however many: one query):
- requests in flight (`tracking`, from the usage middleware): each request of
  such a key ends with a 401 `invalid_api_key`, a stream with an error event
  after what it already sent (billed, as the client got it), any other request
  with the 401 itself; its generations are aborted on the workers as for any
  request that did not finish;
- background responses (`watching`, from api/background_responses.py), which
  mark their response cancelled and stop.
Batch lines end with their batch's cancellation (conveyor/db/key_store.py's
revocation cancels it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterator
from functools import partial

from api.errors import ApiError
from api.reply_router import ReplyRouter
from api.request_record import RequestRecord
from api.sql import in_session
from conveyor.db.database import Database
from conveyor.db.key_store import inactive_keys

logger = logging.getLogger(__name__)

# How often an API process asks SQL whether its work's keys still work (not revoked, their
# project not archived): one query for all of it.
KEY_CHECK_SECONDS = 2.0

# What a watched piece of work runs under (None: no project key, or not watched now) and
# what stops it, given the key that stopped working.
KeyOf = Callable[[], str | None]
OnRevoked = Callable[[str], Awaitable[None]]


def revoked_error() -> ApiError:
    return ApiError(
        401,
        "the API key of this request was revoked (or its project archived) while the "
        "request ran; it was stopped",
        code="invalid_api_key",
    )


def _watched(record: RequestRecord) -> bool:
    """A background response is watched as its run (marked cancelled, then stopped), and
    a batch line ends with its batch's cancellation (its answered lines kept)."""
    return record.background is None and record.principal.batch_id is None


class RevokedKeyWatch:
    """The work this API process runs under project keys, checked against its keys."""

    def __init__(
        self, database: Database, router: ReplyRouter, interval: float = KEY_CHECK_SECONDS
    ) -> None:
        self.database = database
        self.router = router
        self.interval = interval
        self._work: dict[int, tuple[KeyOf, OnRevoked]] = {}
        self._tokens = itertools.count()
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def watching(self, key_of: KeyOf, on_revoked: OnRevoked) -> Iterator[None]:
        """Call `on_revoked(key)` (again at each check, until this block is left) once the
        key `key_of()` names stops working."""
        token = next(self._tokens)
        self._work[token] = (key_of, on_revoked)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._watch())
        try:
            yield
        finally:
            self._work.pop(token, None)

    def tracking(self, record: RequestRecord) -> contextlib.AbstractContextManager[None]:
        """Watch `record` while its HTTP call runs (its key is known once it is
        authenticated, its readers once its prompts are queued)."""

        def key_of() -> str | None:
            return record.principal.api_key_id if _watched(record) else None

        return self.watching(key_of, partial(self._end, record))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        while self._work:
            await asyncio.sleep(self.interval)
            keyed = {
                token: key
                for token, (key_of, _) in list(self._work.items())
                if (key := key_of()) is not None
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
                logger.warning("checking the API keys of work in flight failed: %s", exc)
                continue
            for token, key_id in keyed.items():
                entry = self._work.get(token)
                if entry is None or key_id not in gone:
                    continue
                try:
                    await entry[1](key_id)
                except Exception:  # asked again at the next check, while it is watched
                    logger.exception("stopping work of the revoked API key %s failed", key_id)

    async def _end(self, record: RequestRecord, key_id: str) -> None:
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
