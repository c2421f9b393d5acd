"""vLLM's `return_tokens_as_token_ids` (request field and server flag),
--enable-force-include-usage and --scheduling-policy."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import openai

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


# --- vLLM's return_token_ids ---------------------------------------------------------------


def test_return_token_ids_on_completions(client: httpx.Client, worker: FakeWorker) -> None:
    body = {"model": "fake-model", "prompt": "Count:", "max_tokens": 3, "n": 2}
    plain = client.post("/v1/completions", json=body).json()["choices"][0]
    assert "prompt_token_ids" not in plain and "token_ids" not in plain
    answer = client.post("/v1/completions", json={**body, "return_token_ids": True}).json()
    prompt = worker.received[-1].prompt_token_ids
    for index, choice in enumerate(answer["choices"]):
        assert choice["prompt_token_ids"] == prompt
        assert choice["token_ids"] == worker._tokens(worker.received[-1], index)
    chunks = _stream_lines(client, "/v1/completions", {**body, "return_token_ids": True})
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert mine[0]["prompt_token_ids"] == prompt
        assert all("prompt_token_ids" not in c for c in mine[1:])
        streamed = [t for c in mine for t in c["token_ids"]]
        assert streamed == worker._tokens(worker.received[-1], index)
    echoed = _stream_lines(
        client, "/v1/completions", {**body, "n": 1, "echo": True, "return_token_ids": True}
    )
    assert echoed[0]["choices"][0]["text"] == "Count:"
    assert echoed[0]["choices"][0]["prompt_token_ids"] == prompt
    assert [t for c in echoed for t in c["choices"][0]["token_ids"]] == worker.script[:3]


def test_return_token_ids_on_chat_through_the_sdk(sdk: openai.OpenAI, worker: FakeWorker) -> None:
    """vLLM's shape, as RL trainers read it: the prompt's ids at the top (a stream's first
    chunk only), each choice's (each chunk's new) ids beside its text."""
    messages = [{"role": "user", "content": "Count"}]
    extra = {"return_token_ids": True}
    answer = sdk.chat.completions.create(
        model="fake-model", messages=messages, max_tokens=3, extra_body=extra
    )
    prompt = worker.received[-1].prompt_token_ids
    assert answer.prompt_token_ids == prompt  # type: ignore[attr-defined]
    assert answer.choices[0].token_ids == worker.script[:3]  # type: ignore[attr-defined]
    plain = sdk.chat.completions.create(model="fake-model", messages=messages, max_tokens=3)
    assert "prompt_token_ids" not in plain.model_dump()
    assert "token_ids" not in plain.choices[0].model_dump()
    stream = sdk.chat.completions.create(
        model="fake-model", messages=messages, max_tokens=3, stream=True, extra_body=extra
    )
    chunks = list(stream)
    assert chunks[0].prompt_token_ids == prompt  # type: ignore[attr-defined]
    assert all("prompt_token_ids" not in c.model_dump() for c in chunks[1:])
    streamed = [t for c in chunks for t in (c.choices[0].model_dump().get("token_ids") or [])]
    assert streamed == worker.script[:3]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == " one two three"


# --- vLLM's prompt_logprobs ----------------------------------------------------------------


def test_prompt_logprobs_in_vllms_shape(client: httpx.Client, worker: FakeWorker) -> None:
    body = {"model": "fake-model", "prompt": "The capital of France", "max_tokens": 1}
    answer = client.post("/v1/completions", json={**body, "prompt_logprobs": 2}).json()
    prompt = worker.received[-1].prompt_token_ids
    assert worker.received[-1].sampling["prompt_logprobs"] == 2
    entries = answer["choices"][0]["prompt_logprobs"]
    assert len(entries) == len(prompt) and entries[0] is None
    first_alt = str(worker.script[0])
    for token, entry in zip(prompt[1:], entries[1:], strict=True):
        assert entry[str(token)]["logprob"] == -0.5 and entry[str(token)]["rank"] == 1
        assert entry[str(token)]["decoded_token"] == worker.tokenizer.token_bytes_repr(token)
        if str(token) != first_alt:
            assert entry[first_alt] == {
                "logprob": -1.5,
                "rank": 2,
                "decoded_token": worker.tokenizer.token_bytes_repr(worker.script[0]),
            }
    assert "prompt_logprobs" not in client.post("/v1/completions", json=body).json()["choices"][0]
    # echo's logprobs and prompt_logprobs share one request for the larger count.
    both = {**body, "echo": True, "logprobs": 1, "prompt_logprobs": 2}
    answer = client.post("/v1/completions", json=both).json()["choices"][0]
    assert worker.received[-1].sampling["prompt_logprobs"] == 2
    assert all(len(top) == 1 for top in answer["logprobs"]["top_logprobs"][1 : len(prompt)])
    assert len(answer["prompt_logprobs"][1]) == 2
    # Entries name tokens by their text even where logprobs name them by id.
    as_ids = {**body, "prompt_logprobs": 1, "return_tokens_as_token_ids": True}
    entry = client.post("/v1/completions", json=as_ids).json()["choices"][0]["prompt_logprobs"][1]
    assert not any(e["decoded_token"].startswith("token_id:") for e in entry.values())
    chat = {"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]}
    chat_answer = client.post("/v1/chat/completions", json={**chat, "prompt_logprobs": 0}).json()
    prompt = worker.received[-1].prompt_token_ids
    assert len(chat_answer["prompt_logprobs"]) == len(prompt)
    assert [list(e) for e in chat_answer["prompt_logprobs"][1:]] == [[str(t)] for t in prompt[1:]]


def test_prompt_logprobs_refusals(client: httpx.Client) -> None:
    body = {"model": "fake-model", "prompt": "Hi", "max_tokens": 1}
    for extra, message in (
        ({"prompt_logprobs": 1, "stream": True}, "not available when stream"),
        ({"prompt_logprobs": -2}, "-1 (the vocabulary) or more"),
        ({"prompt_logprobs": -1}, "at most 20"),  # every token, past --max-logprobs
        ({"prompt_logprobs": 21}, "at most 20"),
    ):
        refused = client.post("/v1/completions", json={**body, **extra})
        assert refused.status_code == 400, extra
        assert refused.json()["error"]["param"] == "prompt_logprobs"
        assert message in refused.json()["error"]["message"]
    # vLLM takes 0 in a stream (the prompt token alone), and a stream carries none.
    streamed = client.post("/v1/completions", json={**body, "prompt_logprobs": 0, "stream": True})
    assert streamed.status_code == 200 and "prompt_logprobs" not in streamed.text


# --- vLLM's bad_words and allowed_token_ids ------------------------------------------------


def test_bad_words_and_allowed_token_ids_reach_the_worker(
    client: httpx.Client, worker: FakeWorker
) -> None:
    chat = {"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]}
    extras = {"bad_words": ["Paris", " London"], "allowed_token_ids": [5, 17]}
    assert client.post("/v1/chat/completions", json={**chat, **extras}).status_code == 200
    sampling = worker.received[-1].sampling
    assert sampling["bad_words"] == ["Paris", " London"]
    assert sampling["allowed_token_ids"] == [5, 17]
    json_object = {"response_format": {"type": "json_object"}}
    for extra, param in (
        ({"allowed_token_ids": [5], **json_object}, "allowed_token_ids"),
        ({"allowed_token_ids": [10**7]}, "allowed_token_ids"),
        ({"allowed_token_ids": []}, "allowed_token_ids"),
        ({"bad_words": ["  "]}, "bad_words"),
    ):
        refused = client.post("/v1/chat/completions", json={**chat, **extra})
        assert refused.status_code == 400, extra
        assert refused.json()["error"]["param"] == param
