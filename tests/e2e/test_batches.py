"""Batches on the real `conveyor serve`: Celery batch worker, engine worker, embedded Redis,
SQLite, called with the official `openai` SDK the way batch users call OpenAI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import func, select

from conveyor.db.database import Database
from conveyor.db.request_log import RequestLog

from .batch_calls import DONE, jsonl, submit, wait_until
from .conftest import serving

MODEL = "smollm2"
MAX_INFLIGHT = 4
MAX_LINES = 300


class BatchServer:
    def __init__(self, process: subprocess.Popen[bytes], base_url: str, database_url: str) -> None:
        self.process = process
        self.base_url = base_url
        self.database_url = database_url
        self.client = openai.OpenAI(
            base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60
        )


@pytest.fixture(scope="module")
def batch_server(
    bundled_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BatchServer]:
    data_dir = tmp_path_factory.mktemp("batch-data")
    database_url = f"sqlite:///{data_dir / 'conveyor.db'}"
    with serving(
        bundled_model_dir,
        CONVEYOR_BATCH_MAX_INFLIGHT=str(MAX_INFLIGHT),
        CONVEYOR_BATCH_MAX_LINES=str(MAX_LINES),
        CONVEYOR_BATCH_LEASE_TTL="3",
        CONVEYOR_BATCH_SWEEP_INTERVAL="1",
        CONVEYOR_DATA_DIR=str(data_dir),
        CONVEYOR_DATABASE_URL=database_url,
    ) as (base_url, process):
        yield BatchServer(process, base_url, database_url)


def chat_line(custom_id: str, content: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": MODEL,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 8,
            "temperature": 0,
            **body,
        },
    }


def test_upload_create_poll_download(batch_server: BatchServer) -> None:
    client = batch_server.client
    lines = [chat_line(f"req-{i}", f"Name a colour, number {i}.") for i in range(5)]
    batch = submit(client, lines)
    assert batch.status == "validating" and batch.request_counts.total == 0
    batch = wait_until(client, batch.id, lambda b: b.status in DONE)
    assert batch.status == "completed", batch
    assert (batch.request_counts.total, batch.request_counts.completed) == (5, 5)
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    output = jsonl(client, batch.output_file_id)
    assert sorted(o["custom_id"] for o in output) == sorted(line["custom_id"] for line in lines)
    assert batch.error_file_id is None
    # The body is exactly what the endpoint returns: the same greedy answer.
    direct = client.chat.completions.create(**lines[2]["body"])
    (third,) = [o for o in output if o["custom_id"] == "req-2"]
    assert third["response"]["status_code"] == 200 and third["error"] is None
    body = third["response"]["body"]
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == direct.choices[0].message.content
    assert batch.usage is not None
    assert batch.usage.output_tokens == sum(
        o["response"]["body"]["usage"]["completion_tokens"] for o in output
    )


def test_structured_output_lines_run_like_direct_requests(batch_server: BatchServer) -> None:
    """A batch line carries response_format / guided fields to the endpoint unchanged."""
    client = batch_server.client
    answers = ["red", "green", "blue"]
    lines = [
        chat_line("choice", "Pick a colour.", guided_choice=answers),
        chat_line(
            "schema",
            "Name a colour as JSON.",
            max_tokens=60,
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": "colour",
                    "schema": {
                        "type": "object",
                        "properties": {"colour": {"enum": answers}},
                        "required": ["colour"],
                        "additionalProperties": False,
                    },
                },
            },
        ),
    ]
    batch = wait_until(client, submit(client, lines).id, lambda b: b.status in DONE)
    assert batch.status == "completed", batch
    contents = {
        o["custom_id"]: o["response"]["body"]["choices"][0]["message"]["content"]
        for o in jsonl(client, batch.output_file_id)
    }
    assert contents["choice"] in answers
    assert json.loads(contents["schema"])["colour"] in answers
    direct = client.chat.completions.create(**lines[1]["body"])
    assert direct.choices[0].message.content == contents["schema"]


def test_responses_lines_answer_as_the_endpoint_does(batch_server: BatchServer) -> None:
    client = batch_server.client
    lines = [
        {
            "custom_id": f"resp-{i}",
            "method": "POST",
            "url": "/v1/responses",
            "body": {
                "model": MODEL,
                "input": f"Name a fruit, number {i}.",
                "max_output_tokens": 8,
                "temperature": 0,
            },
        }
        for i in range(3)
    ]
    batch = submit(client, lines, endpoint="/v1/responses")
    batch = wait_until(client, batch.id, lambda b: b.status in DONE)
    assert batch.status == "completed", batch
    bodies = {o["custom_id"]: o["response"]["body"] for o in jsonl(client, batch.output_file_id)}
    assert all(body["object"] == "response" for body in bodies.values())
    direct = client.responses.create(**lines[1]["body"])
    assert bodies["resp-1"]["output"][0]["content"][0]["text"] == direct.output_text
    assert batch.usage is not None
    assert batch.usage.output_tokens == sum(b["usage"]["output_tokens"] for b in bodies.values())
    assert batch.usage.input_tokens == sum(b["usage"]["input_tokens"] for b in bodies.values())


def test_a_bad_line_fails_alone(batch_server: BatchServer) -> None:
    client = batch_server.client
    lines = [chat_line(f"ok-{i}", f"Say {i}.") for i in range(4)]
    lines.insert(2, chat_line("bad", "Say hi.", temperature=-1))
    batch = wait_until(client, submit(client, lines).id, lambda b: b.status in DONE)
    assert batch.status == "completed"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (4, 1)
    (error,) = jsonl(client, batch.error_file_id)
    assert error["custom_id"] == "bad"
    assert error["response"]["status_code"] == 400
    assert "temperature" in error["response"]["body"]["error"]["message"]
    assert error["error"] is None  # an HTTP answer's error is its body's, as at OpenAI
    assert len(jsonl(client, batch.output_file_id)) == 4


@pytest.mark.parametrize(
    ("make_file", "code", "line"),
    [
        (lambda: b'{"custom_id": "a"\nnot json\n', "invalid_json_line", 1),
        (lambda: [chat_line("a", "x"), chat_line("a", "y")], "duplicate_custom_id", 2),
        (
            lambda: [chat_line("a", "x"), {**chat_line("b", "y"), "url": "/v1/completions"}],
            "invalid_url",
            2,
        ),
        (
            lambda: [chat_line("a", "x"), chat_line("b", "y", model="other")],
            "mismatched_model",
            2,
        ),
        (
            lambda: [chat_line(f"n{i}", "x") for i in range(MAX_LINES + 1)],
            "too_many_requests",
            MAX_LINES + 1,
        ),
    ],
)
def test_invalid_files_fail_the_batch_naming_the_line(
    batch_server: BatchServer, make_file: Callable[[], Any], code: str, line: int
) -> None:
    client = batch_server.client
    batch = wait_until(client, submit(client, make_file()).id, lambda b: b.status in DONE)
    assert batch.status == "failed" and batch.failed_at
    assert batch.errors is not None and batch.errors.data
    first = batch.errors.data[0]
    assert (first.code, first.line) == (code, line), batch.errors
    assert batch.output_file_id is None


def test_cancel_stops_a_200_line_batch_within_seconds(batch_server: BatchServer) -> None:
    client = batch_server.client
    lines = [chat_line(f"c{i}", f"Count to {i}.", max_tokens=24) for i in range(200)]
    batch = submit(client, lines)
    wait_until(client, batch.id, lambda b: b.request_counts.completed >= MAX_INFLIGHT)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    asked = time.monotonic()
    batch = wait_until(client, batch.id, lambda b: b.status in DONE)
    assert batch.status == "cancelled" and time.monotonic() - asked < 10
    output = jsonl(client, batch.output_file_id)
    assert 0 < len(output) == batch.request_counts.completed < 200
    assert len({o["custom_id"] for o in output}) == len(output)


def _batch_worker_pid(serve_pid: int) -> int:
    """The `conveyor batch-worker` child of this `conveyor serve`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if parent == serve_pid and b"batch-worker" in cmdline:
            return int(entry.name)
    raise AssertionError("no batch worker under conveyor serve")


def test_a_killed_batch_worker_is_replaced_and_each_line_runs_once(
    batch_server: BatchServer,
) -> None:
    client = batch_server.client
    lines = [chat_line(f"k{i}", f"Spell {i}.") for i in range(120)]
    batch = submit(client, lines)
    wait_until(client, batch.id, lambda b: b.request_counts.completed >= 10)
    victim = _batch_worker_pid(batch_server.process.pid)
    os.kill(victim, signal.SIGKILL)
    # The supervisor starts a new batch worker; its sweeper finds the batch once the
    # dead worker's lease has expired, and resumes it from the recorded lines.
    batch = wait_until(client, batch.id, lambda b: b.status in DONE)
    assert batch.status == "completed", batch
    assert _batch_worker_pid(batch_server.process.pid) != victim
    output = jsonl(client, batch.output_file_id)
    assert sorted(o["custom_id"] for o in output) == sorted(line["custom_id"] for line in lines)
    assert batch.request_counts.completed == 120 and batch.request_counts.failed == 0
    # Billed once each too: a line answered just before the kill is replayed, not rerun.
    assert _billed_requests(batch_server, batch.id) == 120


def _billed_requests(server: BatchServer, batch_id: str) -> int:
    """The batch's request-log rows with a 200 (what the usage API bills), once the
    server's log buffer has written them all."""
    database = Database(server.database_url)
    try:

        def count() -> int:
            with database.session() as session:
                query = select(func.count()).where(
                    RequestLog.batch_id == batch_id, RequestLog.status_code == 200
                )
                return int(session.scalar(query) or 0)

        counts = [count()]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (len(counts) < 3 or counts[-1] != counts[-3]):
            time.sleep(0.5)
            counts.append(count())
        return counts[-1]
    finally:
        database.close()


def test_interactive_request_goes_before_waiting_batch_lines(batch_server: BatchServer) -> None:
    client = batch_server.client
    lines = [chat_line(f"w{i}", f"Describe {i}.", max_tokens=16) for i in range(200)]
    batch = submit(client, lines)
    wait_until(client, batch.id, lambda b: b.request_counts.completed >= MAX_INFLIGHT)
    before = client.batches.retrieve(batch.id).request_counts.completed
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0
    )
    after = client.batches.retrieve(batch.id).request_counts.completed
    assert answer.choices[0].message.content
    # Only the lines already in flight may finish first; the ~190 waiting ones come after.
    assert after - before <= 2 * MAX_INFLIGHT, (before, after)
    client.batches.cancel(batch.id)
    wait_until(client, batch.id, lambda b: b.status in DONE)
