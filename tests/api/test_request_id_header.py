"""Every response names its request in `x-request-id` (OpenAI's header; the client's own
X-Request-Id when usable, vLLM's --enable-request-id-headers), and the SDK shows it."""

from __future__ import annotations

import logging

import anthropic
import httpx
import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.errors import install_error_handlers
from api.request_id_header import RequestIdMiddleware, current_request_id
from conveyor.db.database import Database
from conveyor.db.request_log import RequestLog

from .conftest import MODEL, Stack, log_row
from .fakes import FakeWorker, wait_for

MESSAGES = [{"role": "user", "content": "Hi"}]


def generated(response: httpx.Response) -> str:
    value = response.headers["x-request-id"]
    assert value.startswith("req_") and len(value) == len("req_") + 32
    return value


def test_every_answer_is_named_and_names_differ(client: httpx.Client) -> None:
    chat = {"model": MODEL, "messages": MESSAGES, "max_tokens": 2}
    answers = [
        client.post("/v1/chat/completions", json=chat),
        client.post("/v1/chat/completions", json={**chat, "stream": True}),
        client.get("/v1/models"),
        client.get("/health"),
        client.get("/v1/no-such-path"),  # 404
        client.post("/v1/chat/completions", json={"model": MODEL}),  # 400
        client.post("/v1/chat/completions", content=b"x" * (5 << 20)),  # 413, before routing
        client.options(  # a CORS preflight
            "/v1/chat/completions",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        ),
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 404, 400, 413, 200]
    ids = [generated(a) for a in answers]
    assert len(set(ids)) == len(ids)


def test_a_browser_may_read_it(client: httpx.Client) -> None:
    response = client.get("/v1/models", headers={"Origin": "https://app.example"})
    exposed = response.headers["access-control-expose-headers"].lower()
    assert "x-request-id" in exposed


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [("trace-0af7651916cd43dd", True), ("has space", False), ("x" * 201, False), ("", False)],
)
def test_the_callers_own_id_is_echoed_when_usable(
    client: httpx.Client, sent: str, echoed: bool
) -> None:
    response = client.get("/v1/models", headers={"X-Request-Id": sent})
    if echoed:
        assert response.headers["x-request-id"] == sent
    else:
        generated(response)


def test_the_sdk_shows_it_on_results_and_errors(sdk: openai.OpenAI, worker: FakeWorker) -> None:
    completion = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)  # type: ignore[arg-type]
    assert completion._request_id is not None and completion._request_id.startswith("req_")
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.models.retrieve("no-such-model")
    assert missing.value.request_id is not None and missing.value.request_id.startswith("req_")
    mine = sdk.with_options(default_headers={"X-Request-Id": "my-trace"})
    assert mine.models.with_raw_response.list().request_id == "my-trace"


def test_an_unhandled_error_is_answered_and_logged_with_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug's 500 is sent from outside every middleware; it still names its request, and
    the traceback in the log says which request it was."""
    app = FastAPI()
    install_error_handlers(app)
    seen: list[str | None] = []

    @app.get("/boom")
    async def boom() -> None:
        seen.append(current_request_id())
        raise RuntimeError("a bug")

    app.add_middleware(RequestIdMiddleware)
    caplog.set_level(logging.ERROR, logger="api.errors")
    with TestClient(app, raise_server_exceptions=False) as test_client:
        response = test_client.get("/boom", headers={"X-Request-Id": "report-42"})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert response.headers["x-request-id"] == "report-42" and seen == ["report-42"]
    (record,) = [r for r in caplog.records if r.name == "api.errors"]
    assert "x-request-id report-42" in record.getMessage() and record.exc_info


def test_the_request_log_row_keeps_it_so_a_users_report_finds_the_request(
    stack: Stack, client: httpx.Client
) -> None:
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
    generated_id = client.post("/v1/completions", json=body)
    row = log_row(stack, generated_id.json()["id"])
    assert row.http_request_id == generated(generated_id)
    named = client.post("/v1/completions", json=body, headers={"X-Request-Id": "report-77"})
    # Named by the client: the completion is cmpl-report-77, queued under its own id.
    database = Database(stack.server.settings.resolved_database_url)
    try:

        def find() -> RequestLog | None:
            with database.session() as session:
                query = select(RequestLog).where(RequestLog.http_request_id == "report-77")
                return session.scalars(query).one_or_none()

        found = wait_for(find, timeout=10)
    finally:
        database.close()
    assert named.json()["id"] == "cmpl-report-77"
    assert found.endpoint == "/v1/completions" and found.request_id != "cmpl-report-77"
    assert found.response_id == "cmpl-report-77"  # the id the client got, found too


def test_the_anthropic_sdk_shows_it_on_messages_and_errors(
    stack: Stack, worker: FakeWorker
) -> None:
    """Anthropic's SDK reads `request-id` (not `x-request-id`): the same name under both."""
    claude = anthropic.Anthropic(base_url=stack.url, api_key="unused", max_retries=0)
    raw = claude.messages.with_raw_response.create(model=MODEL, max_tokens=2, messages=MESSAGES)  # type: ignore[arg-type]
    assert raw.headers["request-id"] == raw.headers["x-request-id"]
    message = raw.parse()
    assert message._request_id is not None and message._request_id.startswith("req_")
    counted = claude.messages.count_tokens(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert counted._request_id is not None and counted._request_id.startswith("req_")
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="no-such-model", max_tokens=2, messages=MESSAGES)  # type: ignore[arg-type]
    assert missing.value.request_id is not None and missing.value.request_id.startswith("req_")
    # OpenAI's routes keep to OpenAI's header.
    assert "request-id" not in stack.client().get("/v1/models").headers
