"""Run one batch: validate its file, feed its lines through the API, write its results.

The batch moves through OpenAI's statuses (validating -> in_progress ->
finalizing -> completed, or failed / cancelling -> cancelled / expired).
At most `batch_max_inflight` of its lines are in the queue or the engine at
once, so a 50,000-line batch never floods the model's stream; the API puts
them in the batch lane, behind every interactive request. Each line's
result is committed as it arrives (`batch_results`, unique per custom_id),
so a runner that dies is replaced by one that skips what is recorded. The
lease is renewed from its own task for the whole run; a watcher notices,
within half a second, a lost lease, a cancel request or the end of the
completion window; in-flight lines are then
dropped, which closes their HTTP requests, which aborts them in the engine.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.orm import Session

from conveyor.bus import BusNames
from conveyor.db import batch_store
from conveyor.db.base import now
from conveyor.db.batch import Batch
from conveyor.db.batch_store import LineResult
from conveyor.db.database import Database
from conveyor.db.file_store import create_file, get_file, new_file_id, new_storage_key
from conveyor.file_storage import FileStorage
from conveyor.settings import Settings
from conveyor.task_cancel import cancel_and_wait
from workers.batch.lease import BatchLease
from workers.batch.line_client import LineContext, new_line_id, run_line
from workers.batch.validation import BatchLine, LineError, Validated, validate_lines

logger = logging.getLogger(__name__)

T = TypeVar("T")
# "lost": the lease went to another worker; "interrupted": this worker is shutting down.
# Neither finalizes: the batch stays active and is resumed from its checkpoint.
Outcome = Literal["completed", "cancelled", "expired", "lost", "interrupted"]
WATCH_SECONDS = 0.5
# How long a batch's count of failed runs in a row is kept after its last failure.
FAILURES_MEMORY_SECONDS = 24 * 3600
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."


@dataclass(frozen=True)
class BatchSnapshot:
    """The fields a runner needs, copied out of the ORM object (which lives in one session)."""

    id: str
    status: str
    project_id: str | None
    api_key_id: str | None
    input_file_id: str
    endpoint: str
    expires_at: int | None
    output_expires_after: int | None = None

    @classmethod
    def of(cls, batch: Batch) -> BatchSnapshot:
        return cls(
            batch.id,
            batch.status,
            batch.project_id,
            batch.api_key_id,
            batch.input_file_id,
            batch.endpoint,
            batch.expires_at,
            batch.output_expires_after,
        )


class BatchRunner:
    def __init__(
        self,
        settings: Settings,
        database: Database,
        storage: FileStorage,
        redis: Redis,
        client: httpx.AsyncClient,
        stopping: threading.Event | None = None,
    ) -> None:
        self.stopping = stopping or threading.Event()
        self.settings = settings
        self.database = database
        self.storage = storage
        self.redis = redis
        self.client = client
        self.names = BusNames(settings.redis_prefix)

    async def _sql(self, work: Callable[[Session], T]) -> T:
        def run() -> T:
            with self.database.session() as session:
                return work(session)

        return await asyncio.to_thread(run)

    async def run(self, batch_id: str) -> None:
        lease = BatchLease(
            self.redis, self.names.batch_lease(batch_id), self.settings.batch_lease_ttl
        )
        acquired = await lease.acquire()
        # This task was the one waiting for a worker, lease or not: without the mark, the
        # sweeper may queue the batch again as soon as no lease is held (a killed worker).
        # A task that steps aside must clear it too: a duplicate sent in the instant
        # between the sweeper's lease check and this runner's acquire would otherwise
        # leave the mark set for `batch_requeue_after`, and a worker killed meanwhile
        # would leave its batch unattended that long.
        await self.redis.delete(self.names.batch_queued(batch_id))
        if not acquired:
            logger.info("batch %s: another worker holds it", batch_id)
            return
        try:
            async with lease.kept() as lost:
                await self._run_leased(batch_id, lost)
        except Exception:
            # A bug or a fault that outlasts one run (a full disk, a broken row): the
            # sweeper would queue it again at its next look, every few seconds, for ever.
            delay = await self._back_off(batch_id)
            logger.exception(
                "batch %s: the run failed; its recorded lines are kept and it is tried "
                "again in %.0f s",
                batch_id,
                delay,
            )
        else:
            await self.redis.delete(self.names.batch_failures(batch_id))
        finally:
            await lease.release()

    async def _back_off(self, batch_id: str) -> float:
        """Hold the batch from the sweeper for a delay that doubles with each failed run in
        a row (from the sweep interval up to `batch_requeue_after`); the seconds."""
        failures_key = self.names.batch_failures(batch_id)
        failures = int(await self.redis.incr(failures_key))
        await self.redis.expire(failures_key, FAILURES_MEMORY_SECONDS)
        base = max(self.settings.batch_sweep_interval, 1.0)
        delay = min(base * 2 ** min(failures - 1, 20), self.settings.batch_requeue_after)
        # The "queued" mark is what the sweeper leaves alone until it expires.
        await self.redis.set(self.names.batch_queued(batch_id), "back-off", px=int(delay * 1000))
        return delay

    async def _run_leased(self, batch_id: str, lost: asyncio.Event) -> None:
        """`lost` is set when another worker took the batch over: stop without finishing it."""
        batch = await self._sql(lambda s: _snapshot(s, batch_id))
        if batch is None or batch.status in batch_store.TERMINAL:
            return
        if batch.project_id is not None and self.settings.resolved_service_key is None:
            # Without the key the API would take its lines as anonymous: unbilled, and
            # in the interactive lane. Left for a worker configured with one.
            logger.error(
                "batch %s belongs to project %s, but this batch worker has no --service-key "
                "(or --admin-key) to bill its lines to it: not running it",
                batch_id,
                batch.project_id,
            )
            return
        if batch.status == "finalizing":  # every line was recorded; only the files are left
            await self._finalize(batch, "completed", [])
            return
        if batch.status == "cancelling":  # no line runs again: keep what is recorded
            await self._finalize(batch, "cancelled", [])
            return
        validated = await asyncio.to_thread(self._validate, batch)
        if lost.is_set():
            logger.warning("batch %s: lease lost while validating", batch_id)
            return
        if batch.status == "validating" and _expired(batch):
            # Its window passed in the queue: each of its lines is an expired request in the
            # error file, as for a batch the window cut short (a file that does not
            # validate has no lines to name).
            await self._finalize(batch, "expired", [] if validated.errors else validated.lines)
            return
        if validated.errors:
            # Also when resuming: the input file was deleted (or replaced) since it was checked.
            await self._fail(batch, validated.errors)
            return
        if batch.status == "validating" and (
            missing := await self._unknown_model(batch, validated)
        ):
            await self._fail(batch, [missing])
            return
        if batch.status == "validating":
            started = await self._sql(
                lambda s: batch_store.transition(
                    s,
                    batch_id,
                    from_=("validating",),
                    to="in_progress",
                    total=len(validated.lines),
                    model=validated.model,
                )
            )
            if not started:  # cancelled while we validated
                batch = await self._sql(lambda s: _snapshot(s, batch_id))
                if batch is None or batch.status != "cancelling":
                    return
        if batch.status == "cancelling":
            outcome: Outcome = "cancelled"
        else:
            outcome = await self._run_lines(batch, validated.lines, lost)
        if outcome in ("completed", "cancelled", "expired"):
            await self._finalize(batch, outcome, validated.lines)

    def _context(self, batch: BatchSnapshot) -> LineContext:
        key = self.settings.resolved_service_key
        return LineContext(
            batch_id=batch.id,
            project_id=batch.project_id,
            api_key_id=batch.api_key_id,
            service_key=key.get_secret_value() if key else None,
            attempts=self.settings.batch_line_attempts,
        )

    async def _unknown_model(self, batch: BatchSnapshot, validated: Validated) -> LineError | None:
        """The batch's model, if the API says no such model is served (404), as OpenAI
        fails such a batch at validation rather than answering every line with a 404.
        An API that cannot say (down, no live worker yet) leaves it to the lines."""
        model = validated.model
        if model is None or not validated.lines:
            return None
        try:
            response = await self.client.get(
                # Every character quoted: `.` and `..` segments would be resolved away, and
                # the route's path parameter decodes `%2F` back into the name.
                f"/v1/models/{quote(model, safe='')}",
                headers=self._context(batch).headers(),
            )
        except httpx.TransportError:
            return None
        if response.status_code != 404:
            return None
        message = f"The model `{model}` does not exist or you do not have access to it."
        return LineError("model_not_found", message, validated.lines[0].line, "body.model")

    def _validate(self, batch: BatchSnapshot) -> Validated:
        def no_file() -> Validated:
            message = f"input file {batch.input_file_id} was not found"
            return Validated(
                [], None, [LineError("file_not_found", message, None, "input_file_id")]
            )

        with self.database.session() as session:
            # A batch reads its input even once the input's lifetime ended or it was deleted
            # (the purge keeps it until the batch ends): it was there when the batch was
            # created, and the batch may have waited in the queue, or resume after a restart.
            stored = get_file(session, batch.input_file_id, batch.project_id, expired_too=True)
            key = stored.storage_key if stored is not None else None
        if key is None:
            return no_file()
        try:
            with self.storage.open(key) as handle:
                return validate_lines(
                    handle, endpoint=batch.endpoint, max_lines=self.settings.batch_max_lines
                )
        except FileNotFoundError:
            return no_file()

    async def _fail(self, batch: BatchSnapshot, errors: list[LineError]) -> None:
        data = {"object": "list", "data": [e.as_dict() for e in errors]}

        def fail(session: Session) -> bool:
            if batch_store.transition(
                session,
                batch.id,
                from_=("validating", "in_progress"),
                to="failed",
                errors=data,
            ):
                # A resumed batch may have recorded lines; a failed one writes no files.
                batch_store.drop_results(session, batch.id)
                return True
            return False

        if await self._sql(fail):
            logger.info("batch %s failed validation: %s", batch.id, errors[0].message)
        elif await self._sql(lambda s: batch_store.status_of(s, batch.id)) == "cancelling":
            # Cancelled while it was validated: the cancel the client was told of wins (its
            # lines so far, if it had run before, are kept as for any cancel).
            await self._finalize(batch, "cancelled", [])

    async def _run_lines(
        self, batch: BatchSnapshot, lines: list[BatchLine], lost: asyncio.Event
    ) -> Outcome:
        done = await self._sql(lambda s: batch_store.recorded_custom_ids(s, batch.id))
        pending: Iterator[BatchLine] = iter([line for line in lines if line.custom_id not in done])
        context = self._context(batch)

        # A feeder that outlives its cancel (see conveyor/task_cancel) must not take another
        # line: `stopped` is checked before each one.
        stopped = asyncio.Event()
        # Cancelling a feeder does not stop its SQL thread: before the runner stops, every
        # write waits, or it could land after the result files are written.
        writes: set[asyncio.Future[bool]] = set()

        async def feed() -> None:
            for line in pending:
                if stopped.is_set():
                    return
                result = await run_line(self.client, context, line)
                record = asyncio.ensure_future(
                    self._sql(lambda s, r=result: batch_store.record_result(s, batch.id, r))
                )
                writes.add(record)
                record.add_done_callback(writes.discard)  # a long batch keeps none it is done with
                await asyncio.shield(record)
                await self._forget_answer(batch.id, line.line)

        feeders = [
            asyncio.create_task(feed()) for _ in range(max(1, self.settings.batch_max_inflight))
        ]
        all_fed = asyncio.ensure_future(asyncio.gather(*feeders))
        outcome: Outcome = "completed"
        try:
            while not all_fed.done():
                await asyncio.wait({all_fed}, timeout=WATCH_SECONDS)
                if all_fed.done():
                    break
                if self.stopping.is_set():
                    outcome = "interrupted"
                    break
                if lost.is_set():
                    logger.warning("batch %s: lease lost; another worker takes over", batch.id)
                    outcome = "lost"
                    break
                status = await self._sql(lambda s: batch_store.status_of(s, batch.id))
                if status == "cancelling":
                    outcome = "cancelled"
                    break
                if _expired(batch):
                    outcome = "expired"
                    break
            if all_fed.done():
                all_fed.result()  # a bug in a feeder (not a line failure) surfaces here
        finally:
            stopped.set()
            # Cancelled until they stop: in-flight lines' requests close, which aborts them.
            await cancel_and_wait(feeders)
            # Every write, even of a feeder already gone: one landing after the files are
            # written would be counted and billed, and in no file.
            await asyncio.gather(*writes, return_exceptions=True)
            await asyncio.gather(all_fed, return_exceptions=True)  # retrieved, never logged
        return outcome

    async def _forget_answer(self, batch_id: str, line: int) -> None:
        """The line is recorded: the API need not keep its answer for a replay any more."""
        try:
            await self.redis.delete(self.names.batch_line_answer(batch_id, str(line)))
        except RedisError as exc:  # it expires on its own
            logger.debug(
                "batch %s line %d: could not drop its kept answer: %s", batch_id, line, exc
            )

    async def _finalize(
        self, batch: BatchSnapshot, outcome: Outcome, lines: list[BatchLine]
    ) -> None:
        if outcome == "completed":
            moved = await self._sql(
                lambda s: batch_store.transition(
                    s, batch.id, from_=("in_progress", "finalizing"), to="finalizing"
                )
            )
            if not moved:  # a cancel arrived as the last line finished
                outcome = "cancelled"
        if outcome == "expired":
            await self._record_expired(batch, lines)
        output_key, output_bytes, succeeded = await asyncio.to_thread(self._write_file, batch, True)
        error_key, error_bytes, failed = await asyncio.to_thread(self._write_file, batch, False)
        origin = {
            "completed": ("finalizing",),
            "cancelled": ("cancelling",),
            "expired": ("validating", "in_progress", "cancelling"),
        }[outcome]

        def finish(session: Session) -> bool:
            # The counts are the files' lines, so request_counts always match what was written.
            values: dict[str, Any] = {
                "usage": batch_store.usage_totals(session, batch.id),
                "completed": succeeded,
                "failed": failed,
            }
            if outcome == "expired":  # every line is in a file; no total yet if it was queued
                values["total"] = succeeded + failed
            # Ids made now, as their rows are written: a file exists (and its expiry
            # counts) from here, not from when its bytes began.
            files = [
                (column, new_file_id(), key, size, suffix)
                for column, key, size, suffix in (
                    ("output_file_id", output_key, output_bytes, "output"),
                    ("error_file_id", error_key, error_bytes, "error"),
                )
                if key is not None
            ]
            values.update({column: file_id for column, file_id, _, _, _ in files})
            # Rows only once the transition is ours: a loser deletes the bytes (below), and this
            # session commits either way.
            if not batch_store.transition(session, batch.id, from_=origin, to=outcome, **values):
                return False
            for _, file_id, key, size, suffix in files:
                create_file(
                    session,
                    batch.project_id,
                    f"{batch.id}_{suffix}.jsonl",
                    "batch_output",
                    size,
                    key,
                    file_id=file_id,
                    expires_after=batch.output_expires_after,
                )
            batch_store.drop_results(session, batch.id)
            return True

        if await self._sql(finish):
            logger.info("batch %s %s", batch.id, outcome)
        else:
            for key in (output_key, error_key):
                if key is not None:
                    self.storage.delete(key)

    async def _record_expired(self, batch: BatchSnapshot, lines: list[BatchLine]) -> None:
        def work(session: Session) -> None:
            done = batch_store.recorded_custom_ids(session, batch.id)
            for line in lines:
                if line.custom_id in done:
                    continue
                batch_store.record_result(
                    session,
                    batch.id,
                    LineResult(
                        line=line.line,
                        custom_id=line.custom_id,
                        succeeded=False,
                        payload={
                            "id": new_line_id(),
                            "custom_id": line.custom_id,
                            "response": None,
                            "error": {"code": "batch_expired", "message": EXPIRED_MESSAGE},
                        },
                    ),
                )

        await self._sql(work)

    def _write_file(self, batch: BatchSnapshot, succeeded: bool) -> tuple[str | None, int, int]:
        """Stream the recorded lines into a new storage object: (key, bytes, lines), with
        no key when there are no lines."""
        key = new_storage_key()
        written = 0
        with self.database.session() as session:
            rows = batch_store.iter_results(session, batch.id, succeeded=succeeded)
            first = next(rows, None)
            if first is None:
                return None, 0, 0

            def chunks() -> Iterator[bytes]:
                nonlocal written
                for row in itertools.chain((first,), rows):
                    written += 1
                    yield row.encode() + b"\n"

            size = self.storage.save_bytes_iter(key, chunks())
        return key, size, written


def _snapshot(session: Session, batch_id: str) -> BatchSnapshot | None:
    batch = session.get(Batch, batch_id)
    return BatchSnapshot.of(batch) if batch is not None else None


def _expired(batch: BatchSnapshot) -> bool:
    return batch.expires_at is not None and now() >= batch.expires_at


def payload_line(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False)
