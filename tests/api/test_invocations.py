"""POST /invocations (SageMaker's path, as vLLM serves it): each body reaches the route its
fields name and is answered exactly as there, key checks, streaming and usage rows included."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest

from .conftest import MODEL, Stack, log_row, worker_on
from .fakes import FakeWorker

EMBEDDER = "fake-invoked-embedder"
MESSAGES = [{"role": "user", "content": "Count to ten."}]


@pytest.fixture(scope="module")
def embedder(stack: Stack) -> Iterator[FakeWorker]:
    with worker_on(stack, EMBEDDER, instance="invoked-embedder", runner="pooling") as worker:
        yield worker


def test_a_chat_body_is_a_chat_completion(client: httpx.Client, stack: Stack) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, "temperature": 0}
    invoked = client.post("/invocations", json=body)
    assert invoked.status_code == 200, invoked.text
    direct = client.post("/v1/chat/completions", json=body).json()
    answer = invoked.json()
    assert answer["object"] == "chat.completion" and answer["id"].startswith("chatcmpl-")
    assert answer["choices"] == direct["choices"] and answer["usage"] == direct["usage"]
    # Logged and billed as the route it reached.
    row = log_row(stack, answer["id"])
    assert (row.endpoint, row.status_code, row.completion_tokens) == (
        "/v1/chat/completions",
        200,
        4,
    )


def test_a_streamed_chat_body_streams(client: httpx.Client) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 3, "stream": True}
    with client.stream("POST", "/invocations", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_a_prompt_body_is_a_completion(client: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": "Once upon", "max_tokens": 3}
    answer = client.post("/invocations", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["object"] == "text_completion"
    assert answer.json()["usage"]["completion_tokens"] == 3


def test_input_query_and_text_pairs_reach_the_pooling_routes(
    client: httpx.Client, embedder: FakeWorker
) -> None:
    embedded = client.post("/invocations", json={"model": EMBEDDER, "input": ["a", "b c"]})
    assert embedded.status_code == 200, embedded.text
    assert [d["object"] for d in embedded.json()["data"]] == ["embedding", "embedding"]
    reranked = client.post(
        "/invocations", json={"model": EMBEDDER, "query": "q", "documents": ["x", "y z"]}
    )
    assert reranked.status_code == 200, reranked.text
    assert sorted(r["index"] for r in reranked.json()["results"]) == [0, 1]
    scored = client.post("/invocations", json={"model": EMBEDDER, "text_1": "a", "text_2": ["b"]})
    assert scored.status_code == 200, scored.text
    assert scored.json()["data"][0]["object"] == "score"


def test_the_routes_own_refusals_come_back(client: httpx.Client) -> None:
    """A chat body with a bad parameter is the chat route's 400, naming it."""
    body = {"model": MODEL, "messages": MESSAGES, "temperature": -1}
    refused = client.post("/invocations", json=body)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "temperature"
    missing = client.post("/invocations", json={"model": "no-such-model", "prompt": "x"})
    assert missing.status_code == 404


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (json.dumps({"model": MODEL, "text": "hi"}), "messages (/v1/chat/completions)"),
        (json.dumps([{"messages": MESSAGES}]), "must be a JSON object"),
        ("{broken", "not valid JSON"),
    ],
)
def test_a_body_no_route_takes_is_a_400_saying_what_was_expected(
    client: httpx.Client, content: str, says: str
) -> None:
    refused = client.post(
        "/invocations", content=content, headers={"content-type": "application/json"}
    )
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert says in error["message"] and error["type"] == "invalid_request_error"


def test_the_key_is_checked_first(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(api_key="sk-invocations")
    body = {"model": MODEL, "prompt": "x", "max_tokens": 1}
    with stack.client() as client:
        for content in (json.dumps(body), "{broken"):
            refused = client.post("/invocations", content=content)
            assert refused.status_code == 401, content
        allowed = client.post(
            "/invocations", json=body, headers={"Authorization": "Bearer sk-invocations"}
        )
        assert allowed.status_code == 200, allowed.text
