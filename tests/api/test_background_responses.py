"""Background responses (`background: true`) through the official SDK, against a scripted
worker: answered `queued` at once, finished without the client, cancelled from any call,
failed when the worker fails or the server running them stops, and billed when they end."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest
from sqlalchemy import select

from api.background_responses import STALE_GRACE_SECONDS, expire_if_stale
from conveyor.db.database import Database
from conveyor.db.request_log import RequestLog
from conveyor.db.response_store import save_response
from conveyor.db.stored_response import StoredResponse

from .conftest import MODEL, Stack
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


def test_cancel_stops_the_generation_and_sticks(sdk: openai.OpenAI, worker: FakeWorker) -> None:
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
    assert failed.error.code == "oom" and "out of memory" in failed.error.message


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
