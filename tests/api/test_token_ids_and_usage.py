"""vLLM's `return_tokens_as_token_ids` (request field and server flag),
--enable-force-include-usage and --scheduling-policy."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx

from .conftest import Stack, worker_on
from .fakes import FakeWorker


def _ids(client: httpx.Client, text: str) -> list[int]:
    body = {"model": "fake-model", "prompt": text, "add_special_tokens": False}
    return client.post("/tokenize", json=body).json()["tokens"]


def test_a_request_may_ask_for_token_ids(client: httpx.Client, worker: FakeWorker) -> None:
    body = {"model": "fake-model", "prompt": "Count:", "max_tokens": 3, "logprobs": 2}
    plain = client.post("/v1/completions", json=body).json()["choices"][0]["logprobs"]
    as_ids = client.post(
        "/v1/completions", json={**body, "return_tokens_as_token_ids": True}
    ).json()["choices"][0]["logprobs"]
    one, two, three = (_ids(client, word)[0] for word in (" one", " two", " three"))
    assert as_ids["tokens"] == [f"token_id:{one}", f"token_id:{two}", f"token_id:{three}"]
    assert as_ids["top_logprobs"][1] == {f"token_id:{two}": -0.5, f"token_id:{one}": -1.5}
    assert as_ids["text_offset"] == plain["text_offset"] == [0, 4, 8]  # still in the text
    chat = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "Count"}],
        "max_tokens": 2,
        "logprobs": True,
        "top_logprobs": 1,
        "return_tokens_as_token_ids": True,
    }
    content = client.post("/v1/chat/completions", json=chat).json()["choices"][0]["logprobs"]
    first = content["content"][0]
    assert first["token"] == f"token_id:{one}"
    assert bytes(first["bytes"]) == b" one"  # the bytes stay the token's own
    assert first["top_logprobs"][0]["token"] == f"token_id:{one}"


def _stream_lines(client: httpx.Client, path: str, body: dict) -> list[dict]:
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_server_flags_set_both_for_every_request(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(return_tokens_as_token_ids=True, enable_force_include_usage=True)
    with stack.client() as client:
        body = {"model": "fake-model", "prompt": "Count:", "max_tokens": 2, "logprobs": 1}
        chunks = _stream_lines(client, "/v1/completions", body)
        tokens = [t for c in chunks if c["choices"] for t in c["choices"][0]["logprobs"]["tokens"]]
        assert tokens and all(t.startswith("token_id:") for t in tokens)
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2
        chat = {"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]}
        chunks = _stream_lines(client, "/v1/chat/completions", {**chat, "max_tokens": 2})
        assert chunks[-1]["usage"]["completion_tokens"] == 2
        # A request may still say no to ids.
        body = {**body, "return_tokens_as_token_ids": False}
        answer = client.post("/v1/completions", json=body).json()
        assert not answer["choices"][0]["logprobs"]["tokens"][0].startswith("token_id:")


def test_fcfs_scheduling_refuses_priorities_as_vllm_does(
    client: httpx.Client, make_stack: Callable[..., Stack]
) -> None:
    body = {"model": "fake-model", "prompt": "Hi", "max_tokens": 2, "priority": -5}
    assert client.post("/v1/completions", json=body).status_code == 200  # priority: default
    stack = make_stack(scheduling_policy="fcfs")
    with stack.client() as fcfs:
        refused = fcfs.post("/v1/completions", json=body)
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "priority"
        chat = {"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]}
        assert fcfs.post("/v1/chat/completions", json={**chat, "priority": 3}).status_code == 400
        assert fcfs.post("/v1/completions", json={**body, "priority": 0}).status_code == 200
    with worker_on(stack, "embedder", runner="pooling"), stack.client() as fcfs:
        embed = {"model": "embedder", "input": "Hi"}
        assert fcfs.post("/v1/embeddings", json=embed).status_code == 200
        refused = fcfs.post("/v1/embeddings", json={**embed, "priority": 2})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "priority"
