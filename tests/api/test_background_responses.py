"""Background responses (`background: true`) through the official SDK, against a scripted
worker: answered `queued` at once, finished without the client, cancelled from any call,
failed when the worker fails or the server running them stops, and billed when they end."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import openai
import pytest
import redis.asyncio as aioredis
from sqlalchemy import select

from api import background_responses
from api.background_responses import (
    STALE_GRACE_SECONDS,
    BackgroundResponses,
    _end_revoked,
    expire_if_stale,
)
from conveyor.bus import BusNames
from conveyor.db.database import Database
from conveyor.db.project_store import create_project
from conveyor.db.request_log import RequestLog
from conveyor.db.response_store import save_response
from conveyor.db.stored_response import StoredResponse

from ..async_redis import run_with_redis
from .conftest import MODEL, Stack, log_row, running_stack, sdk_client
from .fakes import SCRIPT_TEXT, FakeWorker, wait_for

DONE = ("completed", "incomplete", "failed", "cancelled")


def settled(sdk: openai.OpenAI, response_id: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        response = sdk.responses.retrieve(response_id)
        if response.status in DONE:
            return response
        assert time.monotonic() < deadline, f"still {response.status}"
        time.sleep(0.05)


def test_a_background_response_is_queued_at_once_and_polled_to_the_same_answer(
    sdk: openai.OpenAI, stack: Stack, worker: FakeWorker
) -> None:
    whole = sdk.responses.create(model=MODEL, input="Say something.")
    queued = sdk.responses.create(model=MODEL, input="Say something.", background=True)
    assert queued.status == "queued" and queued.background is True
    assert queued.output == [] and queued.usage is None
    done = settled(sdk, queued.id)
    assert done.status == "completed" and done.background is True
    assert done.output_text == SCRIPT_TEXT == whole.output_text
    assert done.usage is not None and whole.usage is not None
    assert done.usage.output_tokens == whole.usage.output_tokens
    assert done.usage.input_tokens == whole.usage.input_tokens
    # It continues like any stored response.
    follow = sdk.responses.create(model=MODEL, input="More.", previous_response_id=done.id)
    assert follow.status == "completed"
    # Logged (and billed) with the real tokens once it ended, not when the call returned.
    database = Database(stack.server.settings.resolved_database_url)
    try:

        def logged() -> RequestLog | None:
            with database.session() as session:
                return session.scalars(
                    select(RequestLog).where(RequestLog.request_id == queued.id)
                ).one_or_none()

        wait_for(logged, timeout=10)
        row = logged()
        assert row is not None
        assert (row.status_code, row.endpoint) == (200, "/v1/responses")
        assert row.completion_tokens == done.usage.output_tokens
    finally:
        database.close()


def test_cancel_stops_the_generation_and_sticks(
    sdk: openai.OpenAI, stack: Stack, worker: FakeWorker
) -> None:
    worker.behaviour = "slow"  # a token every 50 ms, until aborted
    queued = sdk.responses.create(
        model=MODEL, input="A long story.", background=True, max_output_tokens=200
    )
    wait_for(lambda: any(r.id == queued.id for r in worker.received))
    # Continuing it before it ends is refused: it has no output yet.
    with pytest.raises(openai.BadRequestError, match="still in progress"):
        sdk.responses.create(model=MODEL, input="And?", previous_response_id=queued.id)
    cancelled = sdk.responses.cancel(queued.id)
    assert cancelled.status == "cancelled"
    wait_for(lambda: queued.id in worker.aborted)
    time.sleep(0.3)  # the run has ended: it must not have stored an answer over the cancel
    assert sdk.responses.retrieve(queued.id).status == "cancelled"
    assert sdk.responses.cancel(queued.id).status == "cancelled"  # again: as it is
    # Not billed, like a client that left before its answer.
    assert log_row(stack, queued.id).status_code == 499


def test_it_reads_queued_until_a_worker_starts_it_then_in_progress(
    sdk: openai.OpenAI, worker: FakeWorker
) -> None:
    worker.behaviour = "paused"  # reads nothing: the request waits in the queue
    assert worker.paused.wait(5)  # a read already blocking has returned
    queued = sdk.responses.create(
        model=MODEL, input="A story.", background=True, max_output_tokens=20
    )
    time.sleep(0.3)
    assert sdk.responses.retrieve(queued.id).status == "queued"
    worker.behaviour = "slow"  # a token every 50 ms from here
    wait_for(lambda: sdk.responses.retrieve(queued.id).status == "in_progress", timeout=10)
    done = settled(sdk, queued.id)
    assert done.status == "incomplete" and done.usage is not None  # ran to its limit
    assert done.usage.output_tokens == 20


def test_without_store_it_is_kept_for_polling_only(sdk: openai.OpenAI) -> None:
    queued = sdk.responses.create(model=MODEL, input="Hi", background=True, store=False)
    assert queued.status == "queued" and queued.store is False
    assert settled(sdk, queued.id).output_text == SCRIPT_TEXT
    with pytest.raises(openai.NotFoundError):
        sdk.responses.create(model=MODEL, input="More.", previous_response_id=queued.id)


def test_a_streamed_background_response_replays_from_any_point(
    sdk: openai.OpenAI, worker: FakeWorker
) -> None:
    """`stream: true` streams the run's events; a GET with `starting_after` replays the
    rest, live or after the end, to the same final object a poll reads."""
    events = list(sdk.responses.create(model=MODEL, input="Hi", background=True, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[0].response.status == "queued"
    # Queued until a worker's first reply, then in progress, as a GET reads it.
    assert [e.type for e in events[1:3]] == ["response.queued", "response.in_progress"]
    assert events[1].response.status == "queued"
    assert events[2].response.status == "in_progress"
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.output_text == SCRIPT_TEXT and final.response.background is True
    assert worker.received[-1].stream  # generated token by token
    polled = settled(sdk, final.response.id)
    assert polled.output_text == SCRIPT_TEXT and polled.status == "completed"
    rest = list(sdk.responses.retrieve(final.response.id, stream=True, starting_after=3))
    assert [e.model_dump() for e in rest] == [e.model_dump() for e in events[4:]]
    again = list(sdk.responses.retrieve(final.response.id, stream=True))
    assert len(again) == len(events)


def test_a_dropped_stream_resumes_where_it_left_off(sdk: openai.OpenAI, worker: FakeWorker) -> None:
    worker.behaviour = "slow"  # a token every 50 ms
    stream = sdk.responses.create(
        model=MODEL, input="A story.", background=True, stream=True, max_output_tokens=30
    )
    seen = []
    for event in stream:
        seen.append(event)
        if event.type == "response.output_text.delta" and len(seen) > 6:
            break
    stream.close()  # the client drops; the run goes on
    response_id = seen[0].response.id
    # Tokens have been generated: a worker has it (or it has already run to its end).
    assert sdk.responses.retrieve(response_id).status in ("in_progress", "incomplete")
    rest = list(
        sdk.responses.retrieve(response_id, stream=True, starting_after=seen[-1].sequence_number)
    )
    numbers = [e.sequence_number for e in seen + rest]
    assert numbers == list(range(len(numbers)))
    assert rest[-1].type == "response.incomplete"  # it ran to max_output_tokens
    text = "".join(e.delta for e in seen + rest if e.type == "response.output_text.delta")
    assert text == rest[-1].response.output_text
    assert rest[-1].response.usage is not None and rest[-1].response.usage.output_tokens == 30
    assert response_id not in worker.aborted


def test_cancelling_a_streamed_run_ends_its_stream(
    sdk: openai.OpenAI, stack: Stack, worker: FakeWorker
) -> None:
    worker.behaviour = "slow"
    stream = sdk.responses.create(
        model=MODEL, input="A long story.", background=True, stream=True, max_output_tokens=200
    )
    events = iter(stream)
    first = next(events)
    while next(events).type != "response.output_text.delta":
        pass  # text reached the event log: the client could read it
    sdk.responses.cancel(first.response.id)
    rest = list(events)  # ends (no final event: the run was cancelled)
    assert not [e for e in rest if e.type.startswith("response.completed")]
    wait_for(lambda: first.response.id in worker.aborted)
    assert sdk.responses.retrieve(first.response.id).status == "cancelled"
    # Billed for what the log holds, as a streamed chat a client leaves: a cancel is not
    # a way to be given text for free.
    row = log_row(stack, first.response.id)
    assert row.status_code == 200 and row.completion_tokens is not None
    assert row.completion_tokens >= 1
    # Its log stays replayable, and ends the same way.
    replayed = list(sdk.responses.retrieve(first.response.id, stream=True))
    assert replayed[0].type == "response.created"
    assert not [e for e in replayed if e.type == "response.completed"]


def test_a_worker_error_ends_a_streamed_run_with_the_failed_response(
    sdk: openai.OpenAI, worker: FakeWorker
) -> None:
    worker.behaviour = "error"
    events = list(sdk.responses.create(model=MODEL, input="Hi", background=True, stream=True))
    last = events[-1]
    assert last.type == "response.failed" and last.response.status == "failed"
    assert last.response.error is not None and "out of memory" in last.response.error.message
    assert last.sequence_number == events[-2].sequence_number + 1
    polled = settled(sdk, events[0].response.id)
    assert polled.status == "failed" and polled.error == last.response.error


def test_only_a_streamed_background_response_can_be_streamed_again(sdk: openai.OpenAI) -> None:
    polled = sdk.responses.create(model=MODEL, input="Hi", background=True)
    synchronous = sdk.responses.create(model=MODEL, input="Hi")
    for response_id in (polled.id, synchronous.id):
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.responses.retrieve(response_id, stream=True)
        assert refused.value.param == "stream"
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.retrieve(polled.id, starting_after=2)
    assert refused.value.param == "starting_after"
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve("resp_nope", stream=True)


def test_deleting_a_running_response_stops_it(sdk: openai.OpenAI, worker: FakeWorker) -> None:
    worker.behaviour = "slow"
    queued = sdk.responses.create(
        model=MODEL, input="A long story.", background=True, max_output_tokens=200
    )
    wait_for(lambda: any(r.id == queued.id for r in worker.received))
    sdk.responses.delete(queued.id)
    wait_for(lambda: queued.id in worker.aborted)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(queued.id)


def test_a_worker_error_fails_the_response(sdk: openai.OpenAI, worker: FakeWorker) -> None:
    worker.behaviour = "error"
    queued = sdk.responses.create(model=MODEL, input="Hi", background=True)
    failed = settled(sdk, queued.id)
    assert failed.status == "failed"
    assert failed.error is not None
    # OpenAI's code for a response's error; the worker's own stays in the message.
    assert failed.error.code == "server_error"
    assert "out of memory" in failed.error.message and "(oom)" in failed.error.message


def test_only_background_responses_can_be_cancelled(sdk: openai.OpenAI) -> None:
    done = sdk.responses.create(model=MODEL, input="Hi")
    with pytest.raises(openai.BadRequestError, match="synchronous"):
        sdk.responses.cancel(done.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.cancel("resp_nope")


def test_a_run_whose_server_died_reads_as_failed(stack: Stack) -> None:
    """No generation outlives the request timeout: still running after it, its API process
    is gone, and every reader is told it failed."""
    database = Database(stack.server.settings.resolved_database_url)
    created = int(time.time()) - 1000
    body = {"id": "resp_orphan", "model": MODEL, "created_at": created, "status": "queued"}
    try:
        with database.session() as session:
            save_response(session, None, {**body, "background": True, "output": []}, [])
        with database.session() as session:
            stored = session.get(StoredResponse, "resp_orphan")
            assert stored is not None
            young = expire_if_stale(session, stored, 10_000.0)
            assert young.status == "queued"
            old = expire_if_stale(session, stored, 1000 - STALE_GRACE_SECONDS - 5)
            assert old.status == "failed" and old.body["error"]["code"] == "server_error"
    finally:
        database.close()


def test_a_stopping_server_drains_then_fails_what_still_runs(
    redis_url: str, bundled_model_dir: Path
) -> None:
    with running_stack(redis_url, bundled_model_dir, drain_timeout=0.2) as stack:
        stack.worker.behaviour = "slow"
        with sdk_client(stack) as client:
            queued = client.responses.create(
                model=MODEL, input="A long story.", background=True, max_output_tokens=200
            )
        wait_for(lambda: any(r.id == queued.id for r in stack.worker.received))
        stack.server.stop()  # the lifespan's end: drain 0.2 s, then fail the run
        database = Database(stack.server.settings.resolved_database_url)
        try:
            with database.session() as session:
                stored = session.get(StoredResponse, queued.id)
                assert stored is not None and stored.status == "failed"
                assert "stopped" in stored.body["error"]["message"]
            with database.session() as session:  # logged (unbilled) before the log flushed
                row = session.scalars(
                    select(RequestLog).where(RequestLog.request_id == queued.id)
                ).one()
                assert row.status_code == 503
        finally:
            database.close()
        wait_for(lambda: queued.id in stack.worker.aborted)


def test_the_cancel_watcher_always_stops_when_cancelled(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py's own timeout can swallow a cancellation (3.11's wait_for): the watcher's
    lookups are shielded, so cancelling it mid-lookup still ends it."""
    monkeypatch.setattr(background_responses, "CANCEL_POLL_SECONDS", 0.0)

    async def body(client: aioredis.Redis) -> None:
        runs = BackgroundResponses(client, BusNames("t-watch"), None, 60)  # type: ignore[arg-type]
        for attempt in range(100):
            watcher = asyncio.ensure_future(runs._watch_cancel(f"resp_{attempt}"))
            await asyncio.sleep(0.001 * (attempt % 7))
            watcher.cancel()
            done, _ = await asyncio.wait({watcher}, timeout=2.0)
            assert done, f"the watcher survived its cancellation (attempt {attempt})"

    run_with_redis(redis_url, body)


def test_a_finished_log_replays_whatever_its_age(redis_url: str) -> None:
    """The replay deadline only ends a log that stalls (its process died): one that
    ended replays in full long after, as long as Redis keeps it."""
    from api.response_event_log import LogAbandoned, ResponseEventLog

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)  # as the app's
        try:
            await replay(ResponseEventLog(client, BusNames(prefix="test-log"), ttl=60))
        finally:
            await client.aclose()

    async def replay(log: ResponseEventLog) -> None:
        for number in range(3):
            await log.append("resp_1", {"type": "x", "sequence_number": number})
        await log.end("resp_1")
        past = time.time() - 1
        assert [e["sequence_number"] async for e in log.read("resp_1", None, past)] == [0, 1, 2]
        assert [e["sequence_number"] async for e in log.read("resp_1", 0, past)] == [1, 2]
        await log.append("resp_2", {"type": "x", "sequence_number": 0})
        seen = []
        with pytest.raises(LogAbandoned):
            async for event in log.read("resp_2", None, past):
                seen.append(event)
        assert seen == [{"type": "x", "sequence_number": 0}]

    asyncio.run(scenario())


def test_a_revoked_keys_run_is_cancelled_unless_it_ended(migrated_database_url: str) -> None:
    """`_end_revoked`: a run still going is marked cancelled (and reported, so it is
    stopped), one that finished first keeps its answer (and is not reported, so it is
    billed as finished), one whose row was deleted is stopped too."""
    database = Database(migrated_database_url)
    try:
        with database.session() as session:
            project = create_project(session, "acme")
            for response_id, status in (("resp_a", "in_progress"), ("resp_b", "completed")):
                body = {"id": response_id, "model": MODEL, "created_at": 1, "status": status}
                save_response(session, project.id, {**body, "background": True}, [])
        with database.session() as session:
            ended = {i: _end_revoked(session, i) for i in ("resp_a", "resp_b", "resp_c")}
        assert ended == {"resp_a": True, "resp_b": False, "resp_c": True}
        with database.session() as session:
            statuses = {i: session.get(StoredResponse, i).status for i in ("resp_a", "resp_b")}
        assert statuses == {"resp_a": "cancelled", "resp_b": "completed"}
    finally:
        database.close()


def test_a_poll_after_streamed_output_never_reads_queued(
    sdk: openai.OpenAI, worker: FakeWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row's `in_progress` is written before the run's first events from
    `response.in_progress` on reach its log: with that write slow (a busy database),
    a client that read them and polled used to see `queued`."""
    real = background_responses.mark_in_progress

    def slow(session: Any, response_id: str) -> Any:
        time.sleep(1.0)
        return real(session, response_id)

    monkeypatch.setattr(background_responses, "mark_in_progress", slow)
    worker.behaviour = "slow"  # a token every 50 ms: still running when polled
    stream = sdk.responses.create(
        model=MODEL, input="A story.", background=True, stream=True, max_output_tokens=100
    )
    seen = []
    for event in stream:
        seen.append(event)
        if event.type == "response.output_text.delta":
            break
    stream.close()
    assert sdk.responses.retrieve(seen[0].response.id).status == "in_progress"
