"""POST /v1/chat/completions through uvicorn, against the scripted worker."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import pytest

from .conftest import MAX_MODEL_LEN, MODEL, Stack
from .fakes import CACHED_TOKENS, FakeWorker

MESSAGES = [{"role": "user", "content": "Count to ten."}]


def sse_events(response: httpx.Response) -> list[str]:
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def stream_chunks(client: httpx.Client, path: str, body: dict) -> tuple[list[dict], list[str]]:
    with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]], events


def test_non_stream_shape_and_usage(client: httpx.Client, worker: FakeWorker) -> None:
    response = client.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES, "max_tokens": 4}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == MODEL
    assert isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == " one two three four"
    assert choice["finish_reason"] == "length"
    assert choice["logprobs"] is None
    request = worker.received[-1]
    prompt_tokens = len(request.prompt_token_ids)
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 4,
        "total_tokens": prompt_tokens + 4,
        "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS},
    }


def test_queued_request_carries_template_ids_and_sampling(
    client: httpx.Client, worker: FakeWorker
) -> None:
    before = time.time()
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": MESSAGES,
            "temperature": 0,
            "top_k": 5,
            "stop": "ten",
            "seed": 7,
            "priority": 3,
            "logit_bias": {"42": 5},
        },
    )
    assert response.status_code == 200, response.text
    request = worker.received[-1]
    expected_ids = worker.tokenizer.apply_chat_template(MESSAGES)
    assert request.prompt_token_ids == expected_ids
    assert request.reply_to.startswith("api-")
    assert request.model == MODEL
    assert request.priority == 3
    assert request.stream is False
    assert before <= request.arrival <= time.time()
    assert request.deadline is not None and request.deadline > request.arrival
    sampling = request.sampling
    # No max_tokens: the rest of the context, as vLLM does for chat.
    assert sampling["max_tokens"] == MAX_MODEL_LEN - len(expected_ids)
    assert sampling["temperature"] == 0 and sampling["top_k"] == 5 and sampling["seed"] == 7
    assert sampling["stop"] == ["ten"]
    assert sampling["logit_bias"] == {"42": 5.0}  # JSON keys; the worker converts back
    assert request.cache_salt is None  # no project, no salt: the shared prefix cache


def test_cache_salt_reaches_the_worker_and_must_not_be_empty(
    client: httpx.Client, worker: FakeWorker
) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 1}
    response = client.post("/v1/chat/completions", json={**body, "cache_salt": "tenant-7"})
    assert response.status_code == 200, response.text
    assert worker.received[-1].cache_salt == '[null,"tenant-7"]'
    refused = client.post("/v1/chat/completions", json={**body, "cache_salt": ""})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "cache_salt"


def test_n_choices(client: httpx.Client, worker: FakeWorker) -> None:
    response = client.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": MESSAGES, "max_tokens": 3, "n": 3},
    )
    assert response.status_code == 200, response.text
    choices = response.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    assert [c["message"]["content"] for c in choices] == [
        " one two three",
        " two three four",
        " three four five",
    ]
    assert response.json()["usage"]["completion_tokens"] == 9


def test_logprobs_shape(client: httpx.Client, worker: FakeWorker) -> None:
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": MESSAGES,
            "max_tokens": 2,
            "logprobs": True,
            "top_logprobs": 2,
        },
    )
    assert response.status_code == 200, response.text
    content = response.json()["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in content] == [" one", " two"]
    first = content[0]
    assert first["logprob"] == -0.5
    assert first["bytes"] == list(b" one")
    assert [t["token"] for t in first["top_logprobs"]] == [" one", " one"]
    assert [t["logprob"] for t in first["top_logprobs"]] == [-0.5, -1.5]
    assert all(set(t) == {"token", "logprob", "bytes"} for t in first["top_logprobs"])
    assert worker.received[-1].sampling["logprobs"] == 2


def test_stream_chunks_usage_and_done(client: httpx.Client, worker: FakeWorker) -> None:
    chunks, _ = stream_chunks(
        client,
        "/v1/chat/completions",
        {
            "model": MODEL,
            "messages": MESSAGES,
            "max_tokens": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "usage" not in chunks[0]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == " one two three"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert chunks[-1]["choices"] == []
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + 3
    assert worker.received[-1].stream is True


def test_stream_continuous_usage_and_logprobs(client: httpx.Client, worker: FakeWorker) -> None:
    chunks, _ = stream_chunks(
        client,
        "/v1/chat/completions",
        {
            "model": MODEL,
            "messages": MESSAGES,
            "max_tokens": 2,
            "n": 2,
            "stream": True,
            "logprobs": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        },
    )
    assert all("usage" in c for c in chunks)
    role_chunks = [c for c in chunks if c["choices"] and "role" in c["choices"][0]["delta"]]
    assert sorted(c["choices"][0]["index"] for c in role_chunks) == [0, 1]
    token_chunks = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert all(len(c["choices"][0]["logprobs"]["content"]) == 1 for c in token_chunks)
    by_index: dict[int, str] = {}
    counts: dict[int, list[int]] = {}
    for c in token_chunks:
        choice = c["choices"][0]
        by_index[choice["index"]] = by_index.get(choice["index"], "") + choice["delta"]["content"]
        counts.setdefault(choice["index"], []).append(c["usage"]["completion_tokens"])
    assert by_index == {0: " one two", 1: " two three"}
    # vLLM's: each chunk counts its own choice's tokens so far; the last chunk, all of them.
    assert counts == {0: [1, 2], 1: [1, 2]}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_continuous_usage_needs_include_usage(client: httpx.Client, path: str) -> None:
    """vLLM sends per-chunk usage only with include_usage too; it came on its own here."""
    prompt = {"messages": MESSAGES} if path.endswith("chat/completions") else {"prompt": "Hi"}
    body = {"model": MODEL, **prompt, "max_tokens": 2, "stream": True}
    options = {"include_usage": False, "continuous_usage_stats": True}
    chunks, _ = stream_chunks(client, path, {**body, "stream_options": options})
    assert chunks and not any(c.get("usage") for c in chunks)


def test_continue_final_message(client: httpx.Client, worker: FakeWorker) -> None:
    messages = [*MESSAGES, {"role": "assistant", "content": "Sure: one,"}]
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": messages,
            "max_tokens": 1,
            "add_generation_prompt": False,
            "continue_final_message": True,
        },
    )
    assert response.status_code == 200, response.text
    prompt = worker.tokenizer.decode(
        worker.received[-1].prompt_token_ids, skip_special_tokens=False
    )
    assert prompt.endswith("Sure: one,")


def test_response_role_names_the_answers_role(make_stack: Callable[..., Stack]) -> None:
    """vLLM's --response-role: the answer's role when the request adds the generation
    prompt; without it the answer continues the last message, in that message's role."""
    stack = make_stack(response_role="bot")
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 2}
    with stack.client() as client:
        answer = client.post("/v1/chat/completions", json=body).json()
        assert answer["choices"][0]["message"]["role"] == "bot"
        chunks, _ = stream_chunks(client, "/v1/chat/completions", {**body, "stream": True})
        assert chunks[0]["choices"][0]["delta"]["role"] == "bot"
        unprompted = {**body, "add_generation_prompt": False}
        answer = client.post("/v1/chat/completions", json=unprompted).json()
        assert answer["choices"][0]["message"]["role"] == "user"
        chunks, _ = stream_chunks(client, "/v1/chat/completions", {**unprompted, "stream": True})
        assert chunks[0]["choices"][0]["delta"]["role"] == "user"


def test_echo_leads_with_the_continued_final_message(client: httpx.Client) -> None:
    """vLLM's chat `echo`: a continued final message in the answer's role comes back at the
    start of the answer, streamed as a chunk of its own; another role's is not echoed."""
    prefix = "The numbers are: one,"
    messages = [*MESSAGES, {"role": "assistant", "content": prefix}]
    body = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": 3,
        "temperature": 0,
        "add_generation_prompt": False,
        "continue_final_message": True,
    }
    plain = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
    echoed = client.post("/v1/chat/completions", json={**body, "echo": True}).json()
    assert echoed["choices"][0]["message"]["content"] == prefix + plain["content"]
    chunks, _ = stream_chunks(
        client, "/v1/chat/completions", {**body, "echo": True, "stream": True}
    )
    deltas = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]]
    assert deltas[1] == prefix and "".join(deltas) == prefix + plain["content"]
    # The answer's role (assistant) is not the last message's (user): nothing to echo.
    asked = {"model": MODEL, "messages": MESSAGES, "max_tokens": 3, "temperature": 0}
    unechoed = client.post("/v1/chat/completions", json={**asked, "echo": True}).json()
    again = client.post("/v1/chat/completions", json=asked).json()
    assert unechoed["choices"][0]["message"] == again["choices"][0]["message"]
