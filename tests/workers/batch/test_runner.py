"""BatchRunner against the real API (uvicorn, real Redis, SQLite and PostgreSQL) and the
scripted fake engine worker, without Celery: the runner is what turns a file into lines,
lines into API calls and results into output files, so its outcomes are checked end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from sqlalchemy import select
from sqlalchemy.orm import Session

from conveyor.batch_queue import RUN_BATCH, celery_app, queue_batch, queue_name
from conveyor.bus import BATCH_LANE, BusNames
from conveyor.db import batch_store, migrate
from conveyor.db.batch import Batch
from conveyor.db.batch_store import LineResult
from conveyor.db.database import Database
from conveyor.db.file_store import (
    create_file,
    delete_file,
    get_file,
    new_storage_key,
    purge_expired_files,
)
from conveyor.db.request_log import RequestLog
from conveyor.db.stored_file import StoredFile
from conveyor.file_storage import LocalFileStorage
from conveyor.protocol import GenerateRequest
from conveyor.settings import Settings
from workers.batch import runner as runner_module
from workers.batch.line_client import LineContext
from workers.batch.runner import BatchRunner
from workers.batch.sweeper import BatchSweeper

from ...api.conftest import MODEL, Stack, new_prefix, running_stack, worker_on
from ...api.fakes import FakeWorker, wait_for
from ...postgres_server import PostgresServer

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
PROJECT = "proj_batchtest"
KEY = "key_batchtest"
SERVICE_KEY = "svc-test-key"
MARK = re.compile(r"item-(\d+)-end")


def line(i: int, *, url: str = CHAT, max_tokens: int = 2, **body: Any) -> dict[str, Any]:
    """One input line; its prompt carries `item-<i>-end` so the fake worker's requests can be
    traced back to the line."""
    fields: dict[str, Any] = {"model": MODEL, "max_tokens": max_tokens, **body}
    if url == CHAT:
        fields.setdefault("messages", [{"role": "user", "content": f"item-{i}-end"}])
    else:
        fields.setdefault("prompt", f"item-{i}-end")
    return {"custom_id": f"req-{i}", "method": "POST", "url": url, "body": fields}


@dataclass
class Env:
    """A live API stack and everything a runner needs, pointed at the stack's DB and files."""

    stack: Stack
    settings: Settings
    db: Database
    storage: LocalFileStorage

    @property
    def worker(self) -> FakeWorker:
        return self.stack.worker

    def input_file(self, lines: list[Any], project_id: str | None = PROJECT) -> str:
        data = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
        key = new_storage_key()
        size = self.storage.save_bytes_iter(key, [data.encode()])
        with self.db.session() as session:
            return create_file(session, project_id, "in.jsonl", "batch", size, key).id

    def batch(
        self,
        lines: list[Any],
        *,
        endpoint: str = CHAT,
        project_id: str | None = PROJECT,
        output_expires_after: int | None = None,
    ) -> str:
        file_id = self.input_file(lines, project_id)
        with self.db.session() as session:
            return batch_store.create_batch(
                session,
                project_id=project_id,
                api_key_id=KEY if project_id else None,
                input_file_id=file_id,
                endpoint=endpoint,
                completion_window="24h",
                metadata=None,
                output_expires_after=output_expires_after,
            ).id

    def runner(
        self, client: httpx.AsyncClient, store: aioredis.Redis, **overrides: Any
    ) -> BatchRunner:
        settings = self.settings.model_copy(update=overrides) if overrides else self.settings
        return BatchRunner(settings, self.db, self.storage, store, client)

    async def run_async(
        self, batch_id: str, configure: Callable[[BatchRunner], None] | None = None, **kw: Any
    ) -> None:
        store = aioredis.from_url(self.settings.redis_url or "", decode_responses=True)
        try:
            async with httpx.AsyncClient(base_url=self.stack.url, timeout=30) as client:
                runner = self.runner(client, store, **kw)
                if configure is not None:
                    configure(runner)
                await runner.run(batch_id)
        finally:
            await store.aclose()

    def run(self, batch_id: str, **kw: Any) -> None:
        asyncio.run(asyncio.wait_for(self.run_async(batch_id, **kw), 30))

    def start(self, batch_id: str, **kw: Any) -> Background:
        return Background(lambda: self.run(batch_id, **kw)).start()

    def cancel(self, batch_id: str) -> None:
        """What `POST /v1/batches/{id}/cancel` does to the row."""
        with self.db.session() as session:
            batch = session.get(Batch, batch_id)
            assert batch is not None
            batch_store.request_cancel(session, batch)

    def get(self, batch_id: str) -> Batch:
        with self.db.session() as session:
            batch = session.get(Batch, batch_id)
            assert batch is not None
            return batch

    def key_of(self, file_id: str) -> str:
        """The name a file's bytes are stored under (made before its id: see file_store)."""
        with self.db.session() as session:
            stored = session.get(StoredFile, file_id)
            assert stored is not None
            return stored.storage_key

    def rows(self, file_id: str | None) -> list[dict[str, Any]]:
        """An output or error file's lines, checking its files row on the way."""
        if file_id is None:
            return []
        with self.db.session() as session:
            stored = session.get(StoredFile, file_id)
            assert stored is not None and stored.purpose == "batch_output"
            size, project, key = stored.bytes, stored.project_id, stored.storage_key
        with self.storage.open(key) as handle:
            data = handle.read()
        assert len(data) == size
        assert project == PROJECT or project is None
        return [json.loads(x) for x in data.decode().splitlines()]

    def lease_held(self, batch_id: str) -> bool:
        with redis.Redis.from_url(self.settings.redis_url or "") as client:
            return bool(client.exists(self.stack.names.batch_lease(batch_id)))

    def recorded(self, batch_id: str) -> set[str]:
        with self.db.session() as session:
            return batch_store.recorded_custom_ids(session, batch_id)

    def sent(self) -> list[int]:
        """The line numbers (item-<i>) of every request the fake worker got, in order."""
        return [self.item(r) for r in list(self.worker.received)]

    def item(self, request: GenerateRequest) -> int:
        found = MARK.search(self.worker.tokenizer.decode(request.prompt_token_ids))
        assert found is not None
        return int(found.group(1))


class Background:
    """A runner in its own thread and event loop, so the test can act on the batch meanwhile."""

    def __init__(self, target: Callable[[], None]) -> None:
        self.error: BaseException | None = None

        def main() -> None:
            try:
                target()
            except BaseException as exc:  # re-raised in join()
                self.error = exc

        self.thread = threading.Thread(target=main, name="batch-runner", daemon=True)

    def start(self) -> Background:
        self.thread.start()
        return self

    def join(self, timeout: float = 20) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the runner did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`migrated_database_url`, but one per backend for the module: a stack per test cost
    more than the tests (each test works on its own batches, so sharing is safe)."""
    server: PostgresServer | None = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('batch-db') / 'conveyor.db'}"
    else:
        server = request.getfixturevalue("postgres_server")
        url = server.create_database()
    migrate.upgrade(url)
    yield url
    if server is not None:
        server.drop_database(url)


@pytest.fixture(scope="module")
def shared_stack(
    redis_url: str,
    bundled_model_dir: Path,
    module_database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    with running_stack(
        redis_url,
        bundled_model_dir,
        database_url=module_database_url,
        data_dir=tmp_path_factory.mktemp("batch-data"),
        service_key=SERVICE_KEY,
        log_flush_interval=0.05,
        batch_max_inflight=2,
        batch_lease_ttl=3.0,
    ) as stack:
        yield stack


@pytest.fixture
def env(shared_stack: Stack) -> Iterator[Env]:
    """The module's stack with its fake worker reset: normal behaviour, nothing received."""
    worker = shared_stack.worker
    worker.behaviour = "normal"
    worker.received.clear()
    worker.aborted.clear()
    settings = shared_stack.server.settings
    database = Database(settings.resolved_database_url)
    try:
        yield Env(shared_stack, settings, database, LocalFileStorage(settings.data_dir / "files"))
    finally:
        worker.behaviour = "normal"
        database.close()


def test_completed_batch_writes_every_line_once(env: Env) -> None:
    batch_id = env.batch([line(i, max_tokens=1 + i % 3) for i in range(1, 8)])
    env.run(batch_id)

    batch = env.get(batch_id)
    assert batch.status == "completed", batch.errors
    assert (batch.total, batch.completed, batch.failed) == (7, 7, 0)
    assert batch.model == MODEL
    assert None not in (batch.in_progress_at, batch.finalizing_at, batch.completed_at)
    assert batch.error_file_id is None
    rows = env.rows(batch.output_file_id)
    assert [r["custom_id"] for r in rows] == [f"req-{i}" for i in range(1, 8)]  # input order
    assert len({r["id"] for r in rows}) == 7
    for i, row in enumerate(rows, start=1):
        assert row["error"] is None and row["id"].startswith("batch_req_")
        response = row["response"]
        body = response["body"]
        assert response["status_code"] == 200
        assert response["request_id"].startswith("req_") and body["id"].startswith("chatcmpl-")
        assert body["object"] == "chat.completion" and body["model"] == MODEL
        assert body["usage"]["completion_tokens"] == 1 + i % 3
        assert body["choices"][0]["message"]["role"] == "assistant"
    prompt = sum(r["response"]["body"]["usage"]["prompt_tokens"] for r in rows)
    completion = sum(r["response"]["body"]["usage"]["completion_tokens"] for r in rows)
    assert batch.usage == {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 3 * 7},  # the fake worker's cached tokens
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }
    assert sorted(env.sent()) == list(range(1, 8))  # each line sent once
    # The checkpoint rows are gone (the files hold the results), and so is the lease.
    assert env.recorded(batch_id) == set()
    assert not env.lease_held(batch_id)


def test_lines_are_billed_to_the_batch_and_queued_in_the_batch_lane(env: Env) -> None:
    batch_id = env.batch([line(i) for i in range(1, 4)])
    env.run(batch_id)
    assert env.get(batch_id).status == "completed"
    assert [r.lane for r in env.worker.received] == [BATCH_LANE] * 3

    def logs() -> list[RequestLog]:
        with env.db.session() as session:
            found = list(session.scalars(select(RequestLog).where(RequestLog.batch_id == batch_id)))
        return found if len(found) >= 3 else []

    rows = wait_for(logs)
    assert len(rows) == 3
    assert {(r.batch_id, r.project_id, r.api_key_id) for r in rows} == {(batch_id, PROJECT, KEY)}
    assert {(r.endpoint, r.status_code, r.model) for r in rows} == {(CHAT, 200, MODEL)}
    output = env.rows(env.get(batch_id).output_file_id)
    assert {r.http_request_id for r in rows} == {r["response"]["request_id"] for r in output}


def test_completions_endpoint(env: Env) -> None:
    batch_id = env.batch([line(i, url=COMPLETIONS) for i in (1, 2)], endpoint=COMPLETIONS)
    env.run(batch_id)
    batch = env.get(batch_id)
    assert (batch.status, batch.completed) == ("completed", 2)
    rows = env.rows(batch.output_file_id)
    assert [r["response"]["body"]["object"] for r in rows] == ["text_completion"] * 2
    assert all(r["response"]["body"]["choices"][0]["text"] for r in rows)


def test_output_expires_after_gives_the_files_it_writes_a_lifetime(env: Env) -> None:
    """OpenAI's `output_expires_after`: the output and error files go that long after they
    are written; without it they stay until deleted."""
    batch_id = env.batch([line(1), line(2, temperature=-1)], output_expires_after=7200)
    env.run(batch_id)
    batch = env.get(batch_id)
    with env.db.session() as session:
        for file_id in (batch.output_file_id, batch.error_file_id):
            written = get_file(session, file_id or "", PROJECT)
            assert written is not None and written.expires_at == written.created_at + 7200
        kept = get_file(session, batch.input_file_id, PROJECT)
        assert kept is not None and kept.expires_at is None


def test_batch_without_a_project(env: Env) -> None:
    """Tenancy off: the file, the batch and the output files all belong to no project."""
    batch_id = env.batch([line(1)], project_id=None)
    env.run(batch_id)
    batch = env.get(batch_id)
    assert batch.status == "completed"
    with env.db.session() as session:
        assert get_file(session, batch.output_file_id or "", None) is not None


def test_a_line_the_api_rejects_goes_to_the_error_file(env: Env) -> None:
    batch_id = env.batch([line(1), line(2, temperature=-1), line(3)])
    env.run(batch_id)

    batch = env.get(batch_id)
    assert batch.status == "completed"
    assert (batch.total, batch.completed, batch.failed) == (3, 2, 1)
    assert [r["custom_id"] for r in env.rows(batch.output_file_id)] == ["req-1", "req-3"]
    (bad,) = env.rows(batch.error_file_id)
    assert bad["custom_id"] == "req-2"
    assert bad["response"]["status_code"] == 400
    assert bad["response"]["body"]["error"]["param"] == "temperature"
    # An HTTP answer: its error is in the body, and `error` is null, as in OpenAI's lines.
    assert bad["response"]["body"]["error"]["message"] and bad["error"] is None
    assert sorted(env.sent()) == [1, 3]


def test_an_overloaded_engine_is_waited_out_not_recorded(env: Env) -> None:
    """A 503 (here the fake worker's out-of-memory error) says "not now", not "this line
    failed": the line is retried until it gets a real answer."""
    env.worker.behaviour = "error"
    batch_id = env.batch([line(1)])
    background = env.start(batch_id)
    wait_for(lambda: len(env.worker.received) >= 2, timeout=10)
    assert env.recorded(batch_id) == set()
    env.worker.behaviour = "normal"
    background.join()
    batch = env.get(batch_id)
    assert (batch.status, batch.completed, batch.failed) == ("completed", 1, 0)


def test_validation_failure_fails_the_batch_without_running_a_line(env: Env) -> None:
    batch_id = env.batch([line(1), line(2, stream=True), "not json", line(1)])
    env.run(batch_id)
    batch = env.get(batch_id)
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors is not None and batch.errors["object"] == "list"
    assert [(e["code"], e["line"], e["param"]) for e in batch.errors["data"]] == [
        ("invalid_value", 2, "body.stream"),
        ("invalid_json_line", 3, None),
        ("duplicate_custom_id", 4, "custom_id"),
    ]
    assert batch.output_file_id is None and batch.in_progress_at is None
    assert env.worker.received == []
    assert not env.lease_held(batch_id)


def test_missing_input_file_fails_the_batch(env: Env) -> None:
    batch_id = env.batch([line(1)])
    env.storage.delete(env.key_of(env.get(batch_id).input_file_id))
    env.run(batch_id)
    batch = env.get(batch_id)
    assert batch.status == "failed" and batch.errors is not None
    assert batch.errors["data"][0]["code"] == "file_not_found"


def test_resuming_a_batch_whose_input_file_is_gone_fails_it(env: Env) -> None:
    """Not `completed` with lines missing: the batch says why it stopped."""
    batch_id = env.batch([line(1), line(2)])
    with env.db.session() as session:
        assert batch_store.transition(
            session, batch_id, from_=("validating",), to="in_progress", total=2, model=MODEL
        )
    env.storage.delete(env.key_of(env.get(batch_id).input_file_id))
    env.run(batch_id)
    batch = env.get(batch_id)
    assert batch.status == "failed" and batch.errors is not None
    assert batch.errors["data"][0]["code"] == "file_not_found"
    assert env.worker.received == []


def _start_with_line_one_recorded(session: Session, batch_id: str) -> dict[str, str]:
    """What a worker that died mid-run leaves: the batch in progress, line 1 checkpointed."""
    assert batch_store.transition(
        session, batch_id, from_=("validating",), to="in_progress", total=2, model=MODEL
    )
    payload = {"id": "batch_req_old1", "custom_id": "req-1"}
    batch_store.record_result(session, batch_id, LineResult(1, "req-1", True, payload))
    return payload


def test_failing_a_resumed_batch_drops_its_checkpoint_rows(env: Env) -> None:
    """A failed batch writes no files, so nothing would ever read or delete its results."""
    batch_id = env.batch([line(1), line(2)])
    with env.db.session() as session:
        _start_with_line_one_recorded(session, batch_id)
    env.storage.delete(env.key_of(env.get(batch_id).input_file_id))
    env.run(batch_id)
    assert env.get(batch_id).status == "failed"
    assert env.recorded(batch_id) == set()


def test_resuming_a_cancelling_batch_keeps_its_results_without_its_input_file(env: Env) -> None:
    """A cancel is final: the recorded lines become the output even if the input is gone
    (deleted after the cancel), rather than the batch failing and losing them."""
    batch_id = env.batch([line(1), line(2)])
    with env.db.session() as session:
        payload = _start_with_line_one_recorded(session, batch_id)
        batch = session.get(Batch, batch_id)
        assert batch is not None
        batch_store.request_cancel(session, batch)
    env.storage.delete(env.key_of(env.get(batch_id).input_file_id))
    env.run(batch_id)
    batch = env.get(batch_id)
    assert batch.status == "cancelled" and batch.errors is None
    assert env.rows(batch.output_file_id) == [payload]
    assert env.recorded(batch_id) == set()
    assert env.worker.received == []


def test_cancel_mid_run_keeps_finished_lines_and_aborts_the_rest(env: Env) -> None:
    """Lines 1-2 finish, 3-4 are generating (slowly) when the cancel lands, 5-6 never run."""
    env.worker.behaviour = "slow"  # 50 ms a token
    lines = [line(1), line(2), line(3, max_tokens=200), line(4, max_tokens=200)]
    batch_id = env.batch([*lines, line(5), line(6)])
    background = env.start(batch_id)
    wait_for(lambda: env.get(batch_id).completed == 2 and len(env.worker.received) == 4, 10)
    env.cancel(batch_id)
    cancelled_at = time.monotonic()
    background.join()
    assert time.monotonic() - cancelled_at < 3  # not after the slow lines' 10 s

    batch = env.get(batch_id)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    assert (batch.total, batch.completed, batch.failed) == (6, 2, 0)
    assert [r["custom_id"] for r in env.rows(batch.output_file_id)] == ["req-1", "req-2"]
    assert batch.error_file_id is None  # unrun lines are simply absent
    assert sorted(env.sent()) == [1, 2, 3, 4]
    in_flight = {r.id for r in env.worker.received if env.item(r) in (3, 4)}
    wait_for(lambda: in_flight <= set(env.worker.aborted))
    assert env.recorded(batch_id) == set() and not env.lease_held(batch_id)


def test_a_feeder_that_outlives_its_cancel_takes_no_further_line(env: Env) -> None:
    """Python 3.11's asyncio.wait_for, inside redis-py, can drop a cancel (see
    conveyor/task_cancel): a feeder cancelled while it forgot a line's kept answer went on
    to send every remaining line, and a cancelled 200-line batch ran to its end. Here the
    cancel lands while line 1's answer is being forgotten, in a call that drops cancels."""
    forgetting = threading.Event()

    def drop_cancels_while_forgetting(runner: BatchRunner) -> None:
        async def forget(batch_id: str, line: int) -> None:
            forgetting.set()
            until = time.monotonic() + 1.5  # the runner sees the cancel within 0.5 s
            while (left := until - time.monotonic()) > 0:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(left)

        runner._forget_answer = forget  # type: ignore[method-assign]

    batch_id = env.batch([line(i) for i in range(1, 7)])
    background = env.start(batch_id, configure=drop_cancels_while_forgetting, batch_max_inflight=1)
    assert forgetting.wait(10)
    env.cancel(batch_id)
    background.join()

    batch = env.get(batch_id)
    assert (batch.status, batch.completed, batch.failed) == ("cancelled", 1, 0)
    assert env.sent() == [1]
    assert not env.lease_held(batch_id)


def test_cancel_while_validating(env: Env) -> None:
    batch_id = env.batch([line(1)])
    env.cancel(batch_id)
    env.run(batch_id)
    batch = env.get(batch_id)
    assert (batch.status, batch.output_file_id, batch.error_file_id) == ("cancelled", None, None)
    assert env.worker.received == []


def test_a_cancel_that_lands_while_a_bad_file_is_validated_ends_cancelled(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client was told "cancelling": the batch ends cancelled, not failed."""
    batch_id = env.batch([line(1), "{not json"])
    validate = runner_module.BatchRunner._validate

    def cancelled_meanwhile(runner: BatchRunner, batch: Any) -> Any:
        env.cancel(batch_id)
        return validate(runner, batch)

    monkeypatch.setattr(runner_module.BatchRunner, "_validate", cancelled_meanwhile)
    env.run(batch_id)
    batch = env.get(batch_id)
    assert (batch.status, batch.errors, batch.output_file_id) == ("cancelled", None, None)
    assert batch.cancelled_at is not None
    assert env.worker.received == []


def test_expiry_mid_run_fails_the_unfinished_lines(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The completion window ends while lines 3-4 generate: they and the unrun 5-6 land in the
    error file as batch_expired; what finished stays in the output file."""
    skew = {"seconds": 0}
    monkeypatch.setattr(runner_module, "now", lambda: int(time.time()) + skew["seconds"])
    env.worker.behaviour = "slow"
    lines = [line(1), line(2), line(3, max_tokens=200), line(4, max_tokens=200)]
    batch_id = env.batch([*lines, line(5), line(6)])
    background = env.start(batch_id)
    wait_for(lambda: env.get(batch_id).completed == 2 and len(env.worker.received) == 4, 10)
    skew["seconds"] = 25 * 3600  # past expires_at (24 h after creation)
    background.join()

    batch = env.get(batch_id)
    assert batch.status == "expired" and batch.expired_at is not None
    assert (batch.total, batch.completed, batch.failed) == (6, 2, 4)
    assert [r["custom_id"] for r in env.rows(batch.output_file_id)] == ["req-1", "req-2"]
    errors = env.rows(batch.error_file_id)
    assert [r["custom_id"] for r in errors] == ["req-3", "req-4", "req-5", "req-6"]
    assert {r["error"]["code"] for r in errors} == {"batch_expired"}
    assert all(r["response"] is None for r in errors)
    assert sorted(env.sent()) == [1, 2, 3, 4]
    in_flight = {r.id for r in env.worker.received if env.item(r) in (3, 4)}
    wait_for(lambda: in_flight <= set(env.worker.aborted))


def test_a_batch_expired_before_it_started_runs_nothing_and_names_its_lines(env: Env) -> None:
    """Its window passed in the queue: no line runs, and each is in the error file as
    batch_expired, as for a batch the window cut short."""
    batch_id = env.batch([line(1), line(2)])
    with env.db.session() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        batch.expires_at = int(time.time()) - 1
    env.run(batch_id)
    batch = env.get(batch_id)
    assert batch.status == "expired" and batch.output_file_id is None
    assert (batch.total, batch.completed, batch.failed) == (2, 0, 2)
    errors = env.rows(batch.error_file_id)
    assert [r["custom_id"] for r in errors] == ["req-1", "req-2"]
    assert {r["error"]["code"] for r in errors} == {"batch_expired"}
    assert len({r["id"] for r in errors}) == 2 and errors[0]["id"].startswith("batch_req_")
    assert env.worker.received == []


def test_resume_skips_recorded_lines(env: Env) -> None:
    """A replaced runner sends only what the checkpoint lacks and writes every line once."""
    batch_id = env.batch([line(i) for i in range(1, 6)])
    with env.db.session() as session:
        assert batch_store.transition(
            session, batch_id, from_=("validating",), to="in_progress", total=5, model=MODEL
        )
        for i, ok in ((2, True), (4, False)):
            payload = {"id": f"batch_req_old{i}", "custom_id": f"req-{i}", "resumed": True}
            result = LineResult(i, f"req-{i}", ok, payload, prompt_tokens=100, completion_tokens=1)
            batch_store.record_result(session, batch_id, result)
    env.run(batch_id)

    batch = env.get(batch_id)
    assert batch.status == "completed"
    assert (batch.total, batch.completed, batch.failed) == (5, 4, 1)
    assert sorted(env.sent()) == [1, 3, 5]
    output = env.rows(batch.output_file_id)
    assert [r["custom_id"] for r in output] == ["req-1", "req-2", "req-3", "req-5"]
    assert output[1] == {"id": "batch_req_old2", "custom_id": "req-2", "resumed": True}
    assert [r["custom_id"] for r in env.rows(batch.error_file_id)] == ["req-4"]
    assert batch.usage is not None and batch.usage["input_tokens"] >= 200


def test_a_line_answered_before_a_crash_is_replayed_not_run_or_billed_again(env: Env) -> None:
    """The API answered line 2, then its batch worker died before recording it (QA: a
    SIGKILLed batch worker billed 44 requests for 40 lines). The resumed run gets the
    kept answer back: line 2 is generated and billed once, and no kept answer outlives
    its recording."""
    lines = [line(i) for i in range(1, 4)]
    batch_id = env.batch(lines)
    with env.db.session() as session:
        assert batch_store.transition(
            session, batch_id, from_=("validating",), to="in_progress", total=3, model=MODEL
        )
    context = LineContext(batch_id, PROJECT, KEY, SERVICE_KEY, attempts=1)
    with httpx.Client(base_url=env.stack.url, timeout=10) as http:
        first = http.post(CHAT, json=lines[1]["body"], headers=context.headers(2))
    assert first.status_code == 200
    env.run(batch_id)

    batch = env.get(batch_id)
    assert batch.status == "completed" and batch.completed == 3
    assert sorted(env.sent()) == [1, 2, 3]  # line 2 once: before the "crash"
    output = env.rows(batch.output_file_id)
    assert output[1]["response"]["body"] == first.json()

    def logs() -> list[RequestLog]:
        with env.db.session() as session:
            found = list(session.scalars(select(RequestLog).where(RequestLog.batch_id == batch_id)))
        return found if len(found) >= 3 else []

    assert len(wait_for(logs)) == 3
    time.sleep(0.5)  # several log flushes more: no fourth row
    assert len(logs()) == 3
    names = BusNames(env.settings.redis_prefix)
    with redis.Redis.from_url(env.settings.redis_url or "") as client:
        assert not client.keys(names.batch_line_answer(batch_id, "*"))


def test_a_batch_resumed_after_its_inputs_lifetime_still_reads_it(env: Env) -> None:
    """The input's `expires_after` ends mid-run (an hour, in a 24-hour window) and the
    worker restarts: the batch resumes from the file, which the purge keeps until the
    batch has ended; so does a batch that waited in the queue past it (the API let it be
    created while the file was there)."""
    batch_id = env.batch([line(i) for i in range(1, 4)])
    input_id = env.get(batch_id).input_file_id
    with env.db.session() as session:
        assert batch_store.transition(
            session, batch_id, from_=("validating",), to="in_progress", total=3, model=MODEL
        )
        result = LineResult(1, "req-1", True, {"custom_id": "req-1"}, prompt_tokens=1)
        batch_store.record_result(session, batch_id, result)
        stored = session.get(StoredFile, input_id)
        assert stored is not None
        stored.expires_at = int(time.time()) - 1
    with env.db.session() as session:
        assert purge_expired_files(session) == []  # in use
        assert get_file(session, input_id, PROJECT) is None  # gone to everyone else
    late = env.batch([line(1)])
    with env.db.session() as session:
        session.get(Batch, late).input_file_id = input_id  # type: ignore[union-attr]
    env.run(late)
    assert env.get(late).status == "completed"
    env.run(batch_id)
    batch = env.get(batch_id)
    assert batch.status == "completed" and (batch.completed, batch.failed) == (3, 0)
    assert sorted(env.sent()) == [1, 2, 2, 3, 3]  # the late one: all three; the first: 2, 3
    with env.db.session() as session:  # the batches have ended: the file goes
        assert len(purge_expired_files(session)) == 1


def test_deleting_the_input_of_a_batch_under_way_hides_it_until_the_batch_ends(
    env: Env,
) -> None:
    """Deleting the input right after creating the batch is a common clean-up: the file is
    gone to every caller, but the batch still runs from it (also resumed after a restart,
    its finished lines kept); its bytes go with the purge once the batch has ended."""
    batch_id = env.batch([line(i) for i in range(1, 4)])
    input_id = env.get(batch_id).input_file_id
    with env.db.session() as session:
        assert batch_store.transition(
            session, batch_id, from_=("validating",), to="in_progress", total=3, model=MODEL
        )
        batch_store.record_result(
            session, batch_id, LineResult(1, "req-1", True, {"custom_id": "req-1"})
        )
        stored = session.get(StoredFile, input_id)
        assert stored is not None
        assert delete_file(session, stored) is None  # hidden, its bytes kept
    with env.db.session() as session:
        assert get_file(session, input_id, PROJECT) is None
        assert purge_expired_files(session) == []  # in use
    env.run(batch_id)
    batch = env.get(batch_id)
    assert batch.status == "completed" and (batch.completed, batch.failed) == (3, 0)
    assert sorted(env.sent()) == [2, 3]
    with env.db.session() as session:
        (key,) = purge_expired_files(session)
    assert env.storage.exists(key)  # the caller deletes the bytes after the commit
    with env.db.session() as session:  # a file no batch uses is deleted outright
        other = session.get(StoredFile, env.input_file([line(9)]))
        assert other is not None and delete_file(session, other) == other.storage_key


def test_a_second_runner_steps_aside_while_the_lease_is_held(env: Env) -> None:
    env.worker.behaviour = "slow"
    batch_id = env.batch([line(1, max_tokens=20), line(2, max_tokens=20)])
    background = env.start(batch_id)
    wait_for(lambda: len(env.worker.received) == 2, 10)
    with redis.Redis.from_url(env.settings.redis_url or "") as client:
        holder = client.get(env.stack.names.batch_lease(batch_id))
    assert holder is not None
    with redis.Redis.from_url(env.settings.redis_url or "") as client:
        # A duplicate task the sweeper sent just before the first runner took the lease.
        client.set(env.stack.names.batch_queued(batch_id), "1", px=600_000)
    started = time.monotonic()
    env.run(batch_id)  # returns at once: it never got the lease
    assert time.monotonic() - started < 1
    with redis.Redis.from_url(env.settings.redis_url or "") as client:
        # Its task is consumed: were the holder killed now, the sweeper could queue the
        # batch as soon as the lease expires, not `batch_requeue_after` later.
        assert not client.exists(env.stack.names.batch_queued(batch_id))
    assert env.get(batch_id).status == "in_progress"
    assert len(env.worker.received) == 2
    with redis.Redis.from_url(env.settings.redis_url or "") as client:
        assert client.get(env.stack.names.batch_lease(batch_id)) == holder
    background.join()
    batch = env.get(batch_id)
    assert (batch.status, batch.completed) == ("completed", 2)
    assert sorted(env.sent()) == [1, 2]


def test_a_runner_that_loses_its_lease_stops_without_finalizing(env: Env) -> None:
    """Another worker took over (the lease expired and was taken): this one must put the
    batch down at once, leave the new holder's lease alone, and finish nothing."""
    env.worker.behaviour = "slow"
    batch_id = env.batch([line(1, max_tokens=200), line(2, max_tokens=200)])
    background = env.start(batch_id, batch_lease_ttl=1.2)
    wait_for(lambda: len(env.worker.received) == 2, 10)
    key = env.stack.names.batch_lease(batch_id)
    with redis.Redis.from_url(env.settings.redis_url or "") as client:
        client.set(key, "another-worker", px=30_000)
        background.join(timeout=5)
        assert client.get(key) == b"another-worker"
    assert env.get(batch_id).status == "in_progress"
    in_flight = {r.id for r in env.worker.received}
    wait_for(lambda: in_flight <= set(env.worker.aborted))


def test_interrupted_runner_keeps_its_checkpoint_for_the_next_one(env: Env) -> None:
    """A shutting-down worker puts the batch down (still in_progress, lease released); the next
    runner finishes it without resending the recorded lines."""
    env.worker.behaviour = "slow"
    stopping = threading.Event()
    lines = [line(1), line(2), line(3, max_tokens=200), line(4, max_tokens=200), line(5)]
    batch_id = env.batch(lines)

    def attach(runner: BatchRunner) -> None:
        runner.stopping = stopping

    background = env.start(batch_id, configure=attach)
    wait_for(lambda: env.get(batch_id).completed == 2 and len(env.worker.received) == 4, 10)
    stopping.set()
    background.join(timeout=5)

    batch = env.get(batch_id)
    assert batch.status == "in_progress" and batch.completed == 2
    assert env.recorded(batch_id) == {"req-1", "req-2"}
    assert batch.output_file_id is None
    assert not env.lease_held(batch_id)

    env.worker.behaviour = "normal"
    env.worker.received.clear()
    env.run(batch_id)
    batch = env.get(batch_id)
    assert (batch.status, batch.completed, batch.failed) == ("completed", 5, 0)
    assert sorted(env.sent()) == [3, 4, 5]
    output = env.rows(batch.output_file_id)
    assert [r["custom_id"] for r in output] == [f"req-{i}" for i in range(1, 6)]


def test_a_batch_made_through_the_api_is_queued_for_the_workers(env: Env) -> None:
    """POST /v1/files + /v1/batches (no batch worker running): the task message waits in
    the Celery queue, and a runner picks the batch up from there."""
    data = "".join(json.dumps(line(i)) + "\n" for i in (1, 2)).encode()
    with env.stack.client() as http:
        upload = http.post(
            "/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"}
        )
        assert upload.status_code == 200, upload.text
        created = http.post(
            "/v1/batches",
            json={
                "input_file_id": upload.json()["id"],
                "endpoint": CHAT,
                "completion_window": "24h",
            },
        )
        assert created.status_code == 200, created.text
    batch_id = created.json()["id"]
    assert created.json()["status"] == "validating"
    assert batch_id in queued_batches(env.settings)
    env.run(batch_id)
    with env.stack.client() as http:
        done = http.get(f"/v1/batches/{batch_id}").json()
        assert done["status"] == "completed", done
        assert done["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
        content = http.get(f"/v1/files/{done['output_file_id']}/content")
    assert content.status_code == 200
    assert [json.loads(x)["custom_id"] for x in content.text.splitlines()] == ["req-1", "req-2"]


def queued_batches(settings: Settings) -> list[str]:
    """The batch ids of the run_batch task messages waiting in the Celery queue (a list)."""
    with redis.Redis.from_url(settings.redis_url or "", decode_responses=True) as client:
        messages = [json.loads(m) for m in client.lrange(queue_name(settings), 0, -1)]
    assert all(m["headers"]["task"] == RUN_BATCH for m in messages)
    return [json.loads(m["headers"]["argsrepr"].replace("'", '"'))[0] for m in messages]


def test_sweeper_queues_each_orphan_once_per_hold_window(
    redis_url: str, migrated_database_url: str
) -> None:
    """Active batches without a lease are queued; one being run, a finished one, or one
    whose task still waits in the queue are not; after `batch_requeue_after` (the
    broker may have lost the message) an orphan is queued again."""
    settings = Settings(
        redis_url=redis_url,
        redis_prefix=new_prefix(),
        database_url=migrated_database_url,
        batch_sweep_interval=0.1,
        batch_requeue_after=0.3,
    )
    names = BusNames(settings.redis_prefix)
    database = Database(migrated_database_url)
    ids: dict[str, str] = {}
    with database.session() as session:
        for status in ("validating", "cancelling", "in_progress", "finalizing", "completed"):
            batch = batch_store.create_batch(
                session,
                project_id=None,
                api_key_id=None,
                input_file_id="file-x",
                endpoint=CHAT,
                completion_window="24h",
                metadata=None,
            )
            batch.status = status
            ids[status] = batch.id
    orphans = sorted(ids[s] for s in ("validating", "cancelling", "finalizing"))
    running = ids["in_progress"]
    hold = settings.batch_requeue_after + 0.05
    sweeper = BatchSweeper(settings, celery_app(settings))
    try:
        with redis.Redis.from_url(redis_url, decode_responses=True) as client:
            client.set(names.batch_lease(running), "someone", px=30_000)
            assert sorted(sweeper.sweep(client, database)) == orphans
            assert sweeper.sweep(client, database) == []
            assert sorted(queued_batches(settings)) == orphans
            time.sleep(hold)
            assert sorted(sweeper.sweep(client, database)) == orphans
            client.delete(names.batch_lease(running))
            time.sleep(hold)
            assert sorted(sweeper.sweep(client, database)) == sorted([*orphans, running])
        assert len(queued_batches(settings)) == 10
    finally:
        database.close()


def test_a_batch_waiting_for_a_worker_is_queued_once_and_its_runner_clears_the_mark(
    env: Env,
) -> None:
    """Sent once (as the API does); sweeps while it waits behind busy workers send nothing
    more; the runner that takes it clears the mark, so a run that dies can be re-queued."""
    settings = env.settings.model_copy(update={"redis_prefix": new_prefix()})
    app = celery_app(settings)
    names = BusNames(settings.redis_prefix)
    batch_id = env.batch([line(1)])
    with redis.Redis.from_url(settings.redis_url or "", decode_responses=True) as client:
        assert queue_batch(app, client, settings, batch_id)
        assert not queue_batch(app, client, settings, batch_id)  # still waiting: not again
        assert client.exists(names.batch_queued(batch_id))
        env.run(batch_id, redis_prefix=settings.redis_prefix)
        assert not client.exists(names.batch_queued(batch_id))
    assert queued_batches(settings) == [batch_id]
    assert env.get(batch_id).status == "completed"


def test_a_model_the_api_does_not_serve_fails_validation(env: Env) -> None:
    """As OpenAI fails it, rather than running every line into a 404."""
    batch_id = env.batch([line(1, model="no-such-model"), line(2, model="no-such-model")])
    env.run(batch_id)
    batch = env.get(batch_id)
    assert batch.status == "failed" and batch.output_file_id is None
    assert batch.errors is not None
    (error,) = batch.errors["data"]
    assert (error["code"], error["line"], error["param"]) == ("model_not_found", 1, "body.model")
    assert "no-such-model" in error["message"]
    assert env.worker.received == []


def test_the_model_check_asks_for_the_name_as_it_is(env: Env) -> None:
    """A name with `.` segments (the path a model was served from, vLLM's name for it)
    reaches the API whole, not resolved into another path."""
    with worker_on(env.stack, "aliased", aliases=("./models/fake",), instance="alias-worker"):
        served = env.batch([line(1, model="./models/fake")])
        env.run(served)
        assert env.get(served).status == "completed", env.get(served).errors
    elsewhere = env.batch([line(1, model="../../health")])
    env.run(elsewhere)
    batch = env.get(elsewhere)
    assert batch.status == "failed" and batch.errors is not None
    assert batch.errors["data"][0]["code"] == "model_not_found"


def test_a_worker_without_a_service_key_leaves_a_projects_batch_alone(env: Env) -> None:
    """Its lines would reach the API as anonymous requests: unbilled, interactive."""
    batch_id = env.batch([line(1)])
    env.run(batch_id, service_key=None, admin_key=None)
    assert env.get(batch_id).status == "validating" and env.worker.received == []
    env.run(batch_id)  # a worker with the key runs it
    assert env.get(batch_id).status == "completed"


def test_values_the_database_cannot_hold_fail_validation(env: Env) -> None:
    """A custom_id or model longer than its column, or with a NUL, made PostgreSQL refuse the
    worker's INSERT on every run: the batch stayed active and was re-queued forever."""
    long_id, nul_id = line(1), line(2)
    long_id["custom_id"], nul_id["custom_id"] = "x" * 513, "a\x00b"
    for bad in ([long_id, line(3)], [nul_id], [line(4, model="m" * 201)], [line(5, model="a\x00")]):
        batch_id = env.batch(bad)
        env.run(batch_id)
        batch = env.get(batch_id)
        assert batch.status == "failed", bad
        assert batch.errors is not None and batch.errors["data"][0]["code"] == "invalid_value"
    assert env.worker.received == []


class RacingStorage(LocalFileStorage):
    """Storage that runs `before_commit` once, right after the first result file is written:
    the moment another runner finishing the same batch would matter."""

    def __init__(self, root: Path, before_commit: Callable[[], None]) -> None:
        super().__init__(root)
        self.before_commit: Callable[[], None] | None = before_commit
        self.saved: list[str] = []

    def save_bytes_iter(self, key: str, chunks: Any, *, max_bytes: int | None = None) -> int:
        size = super().save_bytes_iter(key, chunks, max_bytes=max_bytes)
        self.saved.append(key)
        hook, self.before_commit = self.before_commit, None
        if hook is not None:
            hook()
        return size


def test_a_runner_beaten_to_the_finish_leaves_no_file_behind(env: Env) -> None:
    """Two runners finalizing one batch (a lease lost during a long final write): the loser's
    guarded transition fails and it deletes its files' bytes, so it must not have recorded
    file rows either (they would list files whose content is gone)."""
    batch_id = env.batch([line(1), line(2)])
    with env.db.session() as session:
        batch_store.transition(session, batch_id, from_=("validating",), to="in_progress", total=2)
        for i in (1, 2):
            payload = {"id": f"batch_req_{i}", "custom_id": f"req-{i}"}
            batch_store.record_result(session, batch_id, LineResult(i, f"req-{i}", True, payload))

    def other_runner_finishes() -> None:
        with env.db.session() as session:
            assert batch_store.transition(session, batch_id, from_=("finalizing",), to="completed")

    racing = RacingStorage(env.storage.root, other_runner_finishes)
    env.storage = racing
    env.run(batch_id)

    batch = env.get(batch_id)
    assert batch.status == "completed" and batch.output_file_id is None
    with env.db.session() as session:
        files = session.scalars(select(StoredFile).where(StoredFile.filename.startswith(batch_id)))
        assert list(files) == []
    names = {p.name for p in env.storage.root.iterdir()}
    assert racing.saved and names.isdisjoint(racing.saved), "a written result file was kept"


@pytest.mark.parametrize("inflight", [1, 2])
def test_a_result_being_recorded_when_the_cancel_lands_is_not_lost(
    env: Env, monkeypatch: pytest.MonkeyPatch, inflight: int
) -> None:
    """The cancel arrives while line 1's result is being written (a slow database): that
    write must be part of the batch's files, not land after they are written, which left
    a count (and usage) with no line in any file and a checkpoint row nobody deletes.
    With two in flight, line 2 is still generating: its feeder stops at once, and the
    files must still wait for line 1's write."""
    real_record = batch_store.record_result
    recording = threading.Event()

    def slow_record(session: Any, batch_id: str, result: LineResult) -> bool:
        recording.set()
        time.sleep(1.5)  # the runner sees a cancel within 0.5 s
        return real_record(session, batch_id, result)

    monkeypatch.setattr(batch_store, "record_result", slow_record)
    env.worker.behaviour = "slow"  # 50 ms a token: line 2 takes 10 s
    batch_id = env.batch([line(1), line(2, max_tokens=200), line(3)])
    background = env.start(batch_id, batch_max_inflight=inflight)
    assert recording.wait(10)
    env.cancel(batch_id)
    background.join()

    batch = env.get(batch_id)
    assert batch.status == "cancelled"
    output = env.rows(batch.output_file_id)
    assert [r["custom_id"] for r in output] == ["req-1"]
    assert (batch.completed, batch.failed) == (1, 0)
    billed = output[0]["response"]["body"]["usage"]
    assert batch.usage is not None and batch.usage["output_tokens"] == billed["completion_tokens"]
    assert batch.usage["input_tokens"] == billed["prompt_tokens"]
    assert env.recorded(batch_id) == set()


def test_a_run_that_fails_unexpectedly_backs_off_and_keeps_its_lines(env: Env) -> None:
    """A run that raises (a bug, a full disk) keeps what it recorded and holds the batch
    from the sweeper for a delay that doubles with each failure in a row (it was queued
    again at every sweep, for ever); the next good run finishes it and forgets them."""
    batch_id = env.batch([line(1), line(2)])
    names = env.stack.names
    attempts: list[int] = []

    def break_finalizing(runner: BatchRunner) -> None:
        async def broken(*args: Any, **kwargs: Any) -> None:
            attempts.append(1)
            raise OSError(28, "No space left on device")

        runner._finalize = broken  # type: ignore[method-assign]

    with redis.Redis.from_url(env.settings.redis_url or "", decode_responses=True) as client:
        held = []
        for _ in range(2):
            env.run(batch_id, configure=break_finalizing, batch_sweep_interval=2.0)
            held.append(client.pttl(names.batch_queued(batch_id)))
            assert not client.exists(names.batch_lease(batch_id))  # released all the same
        assert 1_500 < held[0] <= 2_000 and 3_500 < held[1] <= 4_000, held
        assert client.get(names.batch_failures(batch_id)) == "2"
        assert env.get(batch_id).status == "in_progress"  # its lines stay recorded
        assert len(env.worker.received) == 2  # and did not run again
        env.run(batch_id)
        assert not client.exists(names.batch_failures(batch_id))
    assert len(attempts) == 2 and env.get(batch_id).status == "completed"
    assert len(env.worker.received) == 2
