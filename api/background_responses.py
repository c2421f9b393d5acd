"""Background responses (`background: true`): generated after the call returns, then polled.

The create call validates, admits and queues the generation like any response,
stores the response `queued` and answers with it at once; once a worker's first
reply arrives it reads `in_progress` (with `store: false`
it is kept only for polling: deleted ten minutes after the run could last
ended, and never continued). A task of this API
process then collects the answer, ignoring the client (gone by design), and
stores the finished object with one compare-and-set update, so a cancel that
got there first is never overwritten. The request's log row and rate-limit
settlement wait for the task (RequestRecord.background), so usage counts the
real tokens.

A cancel may reach any API replica: it marks the row `cancelled` and sets a
Redis flag (BusNames.response_cancel) that the owning task polls (a cancel on
the owning replica also wakes it at once); the task then stops collecting,
which aborts the generation on the workers. A cancelled response is not
billed (like a client that left before its answer), whichever side of the
race the cancel landed on, unless it streams and output had reached its event
log, where a client could read it: that is billed. A run whose key is revoked, or
whose project is archived, is cancelled the same way within seconds
(api/revoked_key_watch.py, as that key's batches are), wherever the revocation
was made (the admin API or `conveyor keys revoke`): work queued with a stolen
key does not outlive it. A process that stops lets its runs finish for up to
the drain timeout, then cancels them and marks them failed; one that dies
leaves them running in SQL, and a read (or a continuation) after the request
timeout reports them failed (`expire_if_stale`), since no generation outlives
that deadline.

A run created with `stream: true` is generated token by token and its events
go to a Redis log (api/response_event_log.py) that the create call, and any
`GET ?stream=true&starting_after=N`, replay: the client may drop and resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.orm import Session

from api.chat_generation import ChatGeneration
from api.collect import unless
from api.errors import ApiError
from api.request_record import RequestRecord
from api.response_event_log import ResponseEventLog
from api.responses_stream import ResponseEventStream
from api.revoked_key_watch import RevokedKeyWatch
from api.sql import in_session
from conveyor.bus import BusNames
from conveyor.db.database import Database
from conveyor.db.response_store import RUNNING, end_running, mark_in_progress
from conveyor.db.stored_response import StoredResponse

logger = logging.getLogger(__name__)

CANCEL_POLL_SECONDS = 0.5
# How long past the request timeout a running row may sit before a read calls it failed.
STALE_GRACE_SECONDS = 60.0
# How long a response kept only for polling (store false) stays after its run could end.
POLL_WINDOW_SECONDS = 600.0

# A streamed run's events while it waits: the rest (`response.in_progress` on) wait for
# its row to read `in_progress`.
_WHILE_QUEUED = frozenset({"response.created", "response.queued"})

STOPPED_ERROR = {
    "code": "server_error",
    "message": "the API server running this background response stopped before it finished; "
    "create it again",
}


@dataclass(frozen=True)
class BackgroundRun:
    response_id: str
    generation: ChatGeneration
    stream: ResponseEventStream
    record: RequestRecord
    # Its events go to the replayable log (created with stream: true).
    streamed: bool = False


class Cancelled(Exception):
    """The response was cancelled (on any replica) while it ran."""


class BackgroundResponses:
    """This API process's running background responses."""

    def __init__(
        self,
        redis: Redis,
        names: BusNames,
        database: Database,
        cancel_ttl: float,
        drain_timeout: float = 30.0,
        key_watch: RevokedKeyWatch | None = None,
    ) -> None:
        self.redis = redis
        self.names = names
        self.database = database
        self.cancel_ttl = max(1, int(cancel_ttl))
        # Kept for the polling window after the longest run could end.
        self.events = ResponseEventLog(redis, names, cancel_ttl + POLL_WINDOW_SECONDS)
        self.drain_timeout = drain_timeout
        self.tasks: dict[str, asyncio.Task[None]] = {}
        # Set by a cancel on this replica: the run stops without waiting for its next poll.
        self._cancelled: dict[str, asyncio.Event] = {}
        # Stops the runs of a key that stopped working (runs of project keys only).
        self.key_watch = key_watch

    def start(self, run: BackgroundRun) -> None:
        self._cancelled[run.response_id] = asyncio.Event()
        task = asyncio.get_running_loop().create_task(self._run(run))
        self.tasks[run.response_id] = task
        task.add_done_callback(lambda _: self._forget(run.response_id))
        run.record.background = task

    def _forget(self, response_id: str) -> None:
        self.tasks.pop(response_id, None)
        self._cancelled.pop(response_id, None)

    async def cancel(self, response_id: str) -> None:
        """Tell whichever process runs the response to stop it (idempotent)."""
        local = self._cancelled.get(response_id)
        if local is not None:
            local.set()
        await self.redis.set(self.names.response_cancel(response_id), "1", ex=self.cancel_ttl)

    async def stop(self, timeout: float | None = None) -> None:
        """At shutdown: let runs finish for up to `timeout` (the drain timeout unless
        given: what is left of the server's drain), then end the rest (each marks its
        response failed)."""
        wait = self.drain_timeout if timeout is None else timeout
        if self.tasks and wait > 0:
            await asyncio.wait(set(self.tasks.values()), timeout=wait)
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, run: BackgroundRun) -> None:
        record = run.record
        # A streamed run marks its row itself, before its log says in_progress.
        started = None if run.streamed else asyncio.ensure_future(self._mark_started(run))
        try:
            with self._key_watched(run):
                await unless(self._generate(run), self._watch_cancel(run.response_id), Cancelled)
        except Cancelled:
            # As a client that left: nothing billed, unless the run streamed output into
            # its event log, where the client could read it (a streamed chat a client
            # leaves is billed for what it was sent, too).
            delivered = run.streamed and record.completion_tokens > 0
            record.status_code = 200 if delivered else 499
        except ApiError as exc:
            record.status_code = exc.status
            # OpenAI's error codes for a response; the worker's own code stays readable.
            detail = f"{exc.message} ({exc.code})" if exc.code else exc.message
            await self._fail(run, {"code": "server_error", "message": detail})
        except asyncio.CancelledError:
            record.status_code = 503
            with contextlib.suppress(Exception):
                await asyncio.shield(self._fail(run, STOPPED_ERROR))
            raise
        except Exception:
            logger.exception("background response %s failed", run.response_id)
            record.status_code = 500
            error = {"code": "server_error", "message": "the response failed on the server"}
            await self._fail(run, error)
        finally:
            if started is not None:
                started.cancel()
            run.generation.close()
            with contextlib.suppress(Exception):
                if run.streamed:  # readers stop here, whatever ended the run
                    await asyncio.shield(self.events.end(run.response_id))
            with contextlib.suppress(Exception):
                await self.redis.delete(self.names.response_cancel(run.response_id))

    async def _generate(self, run: BackgroundRun) -> None:
        """Collect the answer whole, or (streamed) token by token into the event log.

        A streamed run's events from `response.in_progress` on are held until a worker
        has replied and the row reads `in_progress`: the log said in_progress as the
        first (role) chunk was made, before any worker had the request, and a client
        that read a delta and then polled could still see `queued`."""
        if not run.streamed:
            chunks = run.generation.whole_chunks(final_usage=True, detached=True)
            await run.stream.final(chunks)
            return
        chunks = run.generation.chunks(final_usage=True)
        held: list[dict[str, Any]] = []
        marked = False
        try:
            async for event in run.stream.events(chunks, queued=True):  # as the row says
                if marked or event.get("type") in _WHILE_QUEUED:
                    await self.events.append(run.response_id, event)
                    continue
                held.append(event)
                if not run.generation.reader.started.is_set():
                    continue  # no worker has replied: the row and the log still say queued
                marked = True
                await self._mark_in_progress(run.response_id)
                await self._append_all(run.response_id, held)
        except BaseException:
            # Ended before a worker's first token (an error reply, a cancel): what was held
            # goes first, so the failed or cancelled end follows it in sequence.
            with contextlib.suppress(Exception):
                await self._append_all(run.response_id, held)
            raise
        await self._append_all(run.response_id, held)

    async def _append_all(self, response_id: str, held: list[dict[str, Any]]) -> None:
        while held:
            await self.events.append(response_id, held[0])
            held.pop(0)

    async def _mark_started(self, run: BackgroundRun) -> None:
        """`queued` -> `in_progress` once a worker replies (never over a later status)."""
        await run.generation.reader.started.wait()
        await self._mark_in_progress(run.response_id)

    async def _mark_in_progress(self, response_id: str) -> None:
        try:
            await in_session(self.database, lambda s: mark_in_progress(s, response_id))
        except Exception:  # only the status a poll reads in the meantime is stale
            logger.exception("could not mark background response %s in progress", response_id)

    async def _fail(self, run: BackgroundRun, error: dict[str, Any]) -> None:
        await self._end(run.response_id, "failed", error)
        if run.streamed:  # its readers get the failed object, as a poll does
            failed = {**run.stream.snapshot(), "status": "failed", "error": error}
            event = {
                "type": "response.failed",
                "sequence_number": run.stream.next_sequence_number(),
                "response": failed,
            }
            with contextlib.suppress(Exception):
                await self.events.append(run.response_id, event)

    async def _watch_cancel(self, response_id: str) -> None:
        """Return once the response is cancelled here or on another replica (or its key
        stopped working: `_revoked` sets the local event)."""
        key = self.names.response_cancel(response_id)
        local = self._cancelled.get(response_id) or asyncio.Event()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CANCEL_POLL_SECONDS):
                    await local.wait()
            if local.is_set():
                return
            try:
                # Shielded: redis-py's own timeout can swallow a cancellation of this task
                # (Python 3.11's wait_for), which would leave this loop polling forever.
                cancelled = bool(await asyncio.shield(self.redis.exists(key)))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis blips: keep generating, look again later
                logger.warning("checking %s for a cancel failed: %s", response_id, exc)
                continue
            if cancelled:
                return

    def _key_watched(self, run: BackgroundRun) -> contextlib.AbstractContextManager[None]:
        """While the run goes: once its key stops working (on any replica or the CLI),
        `_revoked` marks it cancelled and stops it."""
        key_id = run.record.principal.api_key_id
        if self.key_watch is None or key_id is None:
            return contextlib.nullcontext()
        return self.key_watch.watching(lambda: key_id, partial(self._revoked, run.response_id))

    async def _revoked(self, response_id: str, key_id: str) -> None:
        """Mark the run cancelled, as a cancel call marks it (one that ended first is left as
        it ended), and stop it through its local cancel event."""
        if not await in_session(self.database, partial(_end_revoked, response_id=response_id)):
            return
        logger.info(
            "background response %s cancelled: its API key %s was revoked", response_id, key_id
        )
        event = self._cancelled.get(response_id)
        if event is not None:
            event.set()

    async def _end(self, response_id: str, status: str, error: dict[str, Any]) -> None:
        def work(session: Session) -> None:
            stored = session.get(StoredResponse, response_id)
            if stored is not None:
                end_running(session, stored, status, error)

        try:
            await in_session(self.database, work)
        except Exception:
            logger.exception("could not mark background response %s %s", response_id, status)


def _end_revoked(session: Session, response_id: str) -> bool:
    """Whether the run of a revoked key is to stop: its row marked cancelled now, or
    deleted (nobody can read it; stopped all the same). One that ended first is not."""
    stored = session.get(StoredResponse, response_id)
    return stored is None or end_running(session, stored, "cancelled")


def expire_if_stale(
    session: Session, stored: StoredResponse, max_age: float, now: Callable[[], float] = time.time
) -> StoredResponse:
    """A response still running long after any generation could have ended: the process
    running it died. Report it failed (stored, so every reader agrees)."""
    if stored.status in RUNNING and now() - stored.created_at > max_age + STALE_GRACE_SECONDS:
        end_running(session, stored, "failed", STOPPED_ERROR)
    return stored
