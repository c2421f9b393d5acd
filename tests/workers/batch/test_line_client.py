"""What counts as a line's answer: against a scripted HTTP transport, no API needed."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from workers.batch import line_client
from workers.batch.line_client import LineContext, run_line
from workers.batch.validation import BatchLine

LINE = BatchLine(1, "req-1", "/v1/completions", {"model": "m", "prompt": "hi"})
CONTEXT = LineContext("batch_x", "proj_x", "key_x", "svc", attempts=2)
OK = {"id": "cmpl-1", "object": "text_completion", "usage": {"prompt_tokens": 2}}


Answer = int | type[httpx.TransportError]


def run(statuses: list[Answer], monkeypatch: pytest.MonkeyPatch) -> tuple[object, list[Answer]]:
    """Each attempt gets the next status, or raises the next transport error."""
    monkeypatch.setattr(line_client, "BACKOFF_SECONDS", (0.0,))
    monkeypatch.setattr(line_client, "waiting_log", line_client.LogThrottle(3600))
    seen: list[Answer] = []

    def respond(request: httpx.Request) -> httpx.Response:
        status = statuses[min(len(seen), len(statuses) - 1)]
        seen.append(status)
        if not isinstance(status, int):
            raise status("", request=request)
        assert request.headers["authorization"] == "Bearer svc"
        assert request.headers["x-conveyor-batch-id"] == "batch_x"
        body = OK if status == 200 else {"error": {"message": f"HTTP {status}", "code": "x"}}
        return httpx.Response(status, json=body)

    async def main() -> object:
        transport = httpx.MockTransport(respond)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await run_line(client, CONTEXT, LINE)

    return asyncio.run(main()), seen


@pytest.mark.parametrize("waiting", [429, 503, 401, 403])
def test_overload_and_a_refused_service_key_are_waited_out(
    waiting: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, seen = run([waiting, waiting, 200], monkeypatch)
    assert seen == [waiting, waiting, 200]
    assert result.succeeded and result.prompt_tokens == 2  # type: ignore[attr-defined]


def test_a_timeout_is_retried_then_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    result, seen = run([504], monkeypatch)
    assert seen == [504, 504]  # context.attempts
    assert not result.succeeded  # type: ignore[attr-defined]


def test_a_client_error_is_the_lines_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    result, seen = run([400, 200], monkeypatch)
    assert seen == [400]
    payload = result.payload  # type: ignore[attr-defined]
    assert payload["response"]["status_code"] == 400 and payload["error"] is None
    assert payload["response"]["body"]["error"]["code"] == "x"


def test_an_unreachable_api_is_waited_out_and_said_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=line_client.__name__)
    result, seen = run([httpx.ConnectError] * 6 + [200], monkeypatch)
    assert len(seen) == 7 and result.succeeded  # type: ignore[attr-defined]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1  # not one per retry, nor none (it used to be DEBUG)
    assert "http://api" in warnings[0].getMessage()
    assert "ConnectError" in warnings[0].getMessage()


def test_one_broken_connection_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    result, seen = run([httpx.ReadError, httpx.ConnectError, httpx.ReadError, 200], monkeypatch)
    assert len(seen) == 4 and result.succeeded  # type: ignore[attr-defined]


def test_a_line_that_breaks_the_connection_each_time_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 5 MB line the API refused unread reset the connection on every try: the batch
    waited for ever. After a few tries it is the line's error."""
    result, seen = run([httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadError], monkeypatch)
    assert len(seen) == line_client.MAX_BROKEN_CONNECTIONS
    assert not result.succeeded  # type: ignore[attr-defined]
    payload = result.payload  # type: ignore[attr-defined]
    assert payload["custom_id"] == "req-1" and payload["response"] is None
    assert payload["error"]["code"] == "connection_closed"
    assert "ReadError" in payload["error"]["message"]


def test_token_counts_read_both_usage_shapes() -> None:
    chat = {
        "prompt_tokens": 5,
        "completion_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 2},
    }
    responses = {
        "input_tokens": 5,
        "output_tokens": 7,
        "input_tokens_details": {"cached_tokens": 2},
        "total_tokens": 12,
    }
    assert line_client._token_counts(chat) == line_client._token_counts(responses) == (5, 7, 2)
    assert line_client._token_counts({}) == (0, 0, 0)
