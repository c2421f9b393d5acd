"""A batch line the API answered is answered again from Redis, never generated or
billed twice (a batch worker killed before recording it resends it on resume)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import func, select

from api.auth import BATCH_HEADER, BATCH_LINE_HEADER
from api.batch_line_answers import ANSWER_TTL_SECONDS, REPLAYED_HEADER
from conveyor.db.database import Database
from conveyor.db.request_log import RequestLog

from .conftest import MODEL, Stack, running_stack
from .fakes import wait_for

SERVICE_KEY = "sk-service"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Count."}], "max_tokens": 4}


@pytest.fixture(scope="module")
def stack(redis_url: str, bundled_model_dir: Path) -> Iterator[Stack]:
    with running_stack(redis_url, bundled_model_dir, admin_key=SERVICE_KEY) as started:
        yield started


def _line(batch: str, line: int | None, key: str = SERVICE_KEY) -> dict[str, str]:
    headers = {"authorization": f"Bearer {key}", BATCH_HEADER: batch}
    if line is not None:
        headers[BATCH_LINE_HEADER] = str(line)
    return headers


def _logged(stack: Stack, batch: str) -> int:
    database = Database(stack.server.settings.resolved_database_url)
    try:
        with database.session() as session:
            return session.scalar(
                select(func.count()).select_from(RequestLog).where(RequestLog.batch_id == batch)
            )
    finally:
        database.close()


def test_a_line_sent_again_gets_its_first_answer_unbilled(stack: Stack) -> None:
    batch = f"batch_{time.monotonic_ns()}"
    stack.worker.received.clear()
    with stack.client() as http:
        first = http.post("/v1/chat/completions", json=CHAT, headers=_line(batch, 7))
        again = http.post("/v1/chat/completions", json=CHAT, headers=_line(batch, 7))
        other = http.post("/v1/chat/completions", json=CHAT, headers=_line(batch, 8))
    assert first.status_code == again.status_code == other.status_code == 200
    assert REPLAYED_HEADER not in first.headers
    assert again.headers[REPLAYED_HEADER] == "true"
    assert again.content == first.content  # the same id, text and usage
    assert other.json()["id"] != first.json()["id"]
    assert len(stack.worker.received) == 2  # lines 7 and 8, once each
    wait_for(lambda: _logged(stack, batch) == 2, timeout=10)
    time.sleep(1.5)  # a log flush more: nothing else arrives
    assert _logged(stack, batch) == 2
    with redis.Redis.from_url(stack.redis_url) as client:
        key = stack.names.batch_line_answer(batch, "7")
        assert 0 < client.ttl(key) <= ANSWER_TTL_SECONDS


def test_errors_and_unnumbered_requests_are_never_replayed(stack: Stack) -> None:
    """Only a 200 is kept (an error is cheap to ask again, and not billed); a batch
    request without a line number, or a line number from another key, is not a line."""
    batch = f"batch_{time.monotonic_ns()}"
    stack.worker.received.clear()
    bad = {**CHAT, "temperature": -1}
    with stack.client() as http:
        refused = http.post("/v1/chat/completions", json=bad, headers=_line(batch, 1))
        answered = http.post("/v1/chat/completions", json=CHAT, headers=_line(batch, 1))
        for _ in range(2):
            plain = http.post("/v1/chat/completions", json=CHAT, headers=_line(batch, None))
            assert plain.status_code == 200 and REPLAYED_HEADER not in plain.headers
        stranger = http.post("/v1/chat/completions", json=CHAT, headers=_line(batch, 1, "sk-x"))
    assert refused.status_code == 400  # and its claim on line 1 released:
    assert answered.status_code == 200 and REPLAYED_HEADER not in answered.headers
    assert stranger.status_code == 401
    assert len(stack.worker.received) == 3


def test_a_resend_while_the_line_is_being_answered_waits_for_its_answer(stack: Stack) -> None:
    """The first request still runs (its batch worker's node was lost, so the API never
    saw it go): the resend gets a 503 to wait on, then the first request's answer."""
    batch = f"batch_{time.monotonic_ns()}"
    stack.worker.received.clear()
    stack.worker.behaviour = "slow"  # a token every 50 ms
    answers: list[httpx.Response] = []
    body = {**CHAT, "max_tokens": 30}

    def first() -> None:
        with stack.client() as http:
            answers.append(http.post("/v1/chat/completions", json=body, headers=_line(batch, 5)))

    thread = threading.Thread(target=first)
    thread.start()
    try:
        wait_for(lambda: stack.worker.received)
        with stack.client() as http:
            busy = http.post("/v1/chat/completions", json=body, headers=_line(batch, 5))
            thread.join(10)
            again = http.post("/v1/chat/completions", json=body, headers=_line(batch, 5))
    finally:
        stack.worker.behaviour = "normal"
        thread.join(10)
    assert busy.status_code == 503, busy.text
    assert busy.json()["error"]["code"] == "batch_line_in_progress"
    assert busy.headers["retry-after"] == "2"
    assert answers and answers[0].status_code == 200
    assert again.headers[REPLAYED_HEADER] == "true" and again.content == answers[0].content
    assert len(stack.worker.received) == 1
