"""benchmarks/serve.py's client side: request bodies and stream timing for each endpoint."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from benchmarks.serve import RequestResult, RequestShape, stream_request


def sse(events: list[dict[str, Any]], *, named: bool, done: bool) -> bytes:
    frames = []
    for event in events:
        head = f"event: {event['type']}\n" if named else ""
        frames.append(f"{head}data: {json.dumps(event)}\n\n")
    if done:
        frames.append("data: [DONE]\n\n")
    return "".join(frames).encode()


def run(shape: RequestShape, body: bytes) -> tuple[RequestResult, dict[str, Any]]:
    sent: dict[str, Any] = {}

    def respond(request: httpx.Request) -> httpx.Response:
        sent.update(json.loads(request.content), path=request.url.path)
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    async def main() -> RequestResult:
        transport = httpx.MockTransport(respond)
        async with httpx.AsyncClient(transport=transport, base_url="http://s/v1") as client:
            return await stream_request(
                client, f"http://s/v1{shape.path}", shape.body("hello"), shape.endpoint
            )

    return asyncio.run(main()), sent


def test_a_responses_stream_is_timed_by_its_text_deltas() -> None:
    shape = RequestShape("responses", "m", 3, "min_tokens")
    events = [
        {"type": "response.created", "response": {"usage": None}},
        *({"type": "response.output_text.delta", "delta": word} for word in ("a", " b", " c")),
        {"type": "response.output_text.done", "text": "a b c"},
        {
            "type": "response.completed",
            "response": {"usage": {"input_tokens": 9, "output_tokens": 3}},
        },
    ]
    result, sent = run(shape, sse(events, named=True, done=False))
    assert sent["path"] == "/v1/responses"
    assert (sent["input"], sent["max_output_tokens"], sent["min_tokens"]) == ("hello", 3, 3)
    assert "stream_options" not in sent and "max_tokens" not in sent
    assert result.error is None
    assert (result.output_tokens, result.prompt_tokens, len(result.itls)) == (3, 9, 2)


def test_a_responses_error_event_is_an_error() -> None:
    shape = RequestShape("responses", "m", 3, "none")
    events = [{"type": "error", "code": "oom", "message": "out of memory"}]
    result, _ = run(shape, sse(events, named=True, done=False))
    assert result.error is not None and "oom" in result.error


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_chat_and_completions_streams_read_usage_chunks(endpoint: str) -> None:
    shape = RequestShape(endpoint, "m", 2, "none")
    piece = (lambda t: {"delta": {"content": t}}) if endpoint == "chat" else (lambda t: {"text": t})
    chunks = [
        {"type": "chunk", "choices": [piece("x")]},
        {"type": "chunk", "choices": [piece("y")]},
        {"type": "chunk", "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}},
    ]
    result, sent = run(shape, sse(chunks, named=False, done=True))
    assert sent["path"] == ("/v1/chat/completions" if endpoint == "chat" else "/v1/completions")
    assert sent["stream_options"] == {"include_usage": True} and sent["max_tokens"] == 2
    assert (result.output_tokens, result.prompt_tokens, result.error) == (2, 4, None)
