"""POST /inference/v1/generate (vLLM's tokens in, tokens out) over HTTP against a scripted
worker: vLLM's shapes, its id naming, its sampling fields passed through, and refusals
before anything is queued. The real engine's answers are in
tests/e2e/test_generate_tokens.py."""

from __future__ import annotations

import json

import httpx

from .conftest import MAX_MODEL_LEN, MODEL
from .fakes import CACHED_TOKENS, FakeWorker

PATH = "/inference/v1/generate"
PROMPT = [11, 12, 13, 14, 15]


def events(response: httpx.Response) -> list[dict]:
    lines = [line.removeprefix("data: ") for line in response.text.splitlines() if line]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_the_answer_is_token_ids_in_vllms_shape(client: httpx.Client, worker: FakeWorker) -> None:
    body = {"token_ids": PROMPT, "sampling_params": {"max_tokens": 4, "temperature": 0}}
    answer = client.post(PATH, json=body, headers={"X-Request-Id": "step-1"})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["request_id"] == data["id"] == "generate-tokens-step-1"
    assert data["model"] == MODEL
    (choice,) = data["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length"
    assert choice["token_ids"] == worker.script[:4] and choice["logprobs"] is None
    assert data["usage"]["prompt_tokens"] == len(PROMPT)
    assert data["usage"]["completion_tokens"] == 4
    assert data["prompt_logprobs"] is None and data["kv_transfer_params"] is None
    (queued,) = worker.received
    assert queued.prompt_token_ids == PROMPT
    assert queued.public_id == "generate-tokens-step-1" and queued.id != queued.public_id
    assert queued.sampling["temperature"] == 0 and queued.sampling["max_tokens"] == 4


def test_vllms_sampling_defaults_apply_and_max_tokens_is_what_the_context_leaves(
    client: httpx.Client, worker: FakeWorker
) -> None:
    body = {"token_ids": PROMPT, "request_id": "mine", "sampling_params": {"detokenize": False}}
    data = client.post(PATH, json=body).json()
    assert data["request_id"] == "generate-tokens-mine"
    (queued,) = worker.received
    assert queued.sampling["temperature"] == 1.0 and queued.sampling["top_k"] == 0
    assert queued.sampling["max_tokens"] is None  # until the context is full


def test_n_choices_logprobs_and_prompt_logprobs(client: httpx.Client, worker: FakeWorker) -> None:
    params = {"n": 2, "max_tokens": 3, "logprobs": 1, "prompt_logprobs": 0, "seed": 1}
    data = client.post(PATH, json={"token_ids": PROMPT, "sampling_params": params}).json()
    assert [c["index"] for c in data["choices"]] == [0, 1]
    assert data["choices"][1]["token_ids"] == worker.script[1:4]
    content = data["choices"][0]["logprobs"]["content"]
    first = worker.script[0]
    assert [entry["token"] for entry in content] == [f"token_id:{t}" for t in worker.script[:3]]
    assert content[0]["logprob"] == -0.5
    assert [top["token"] for top in content[0]["top_logprobs"]] == [f"token_id:{first}"]
    prompt_logprobs = data["prompt_logprobs"]
    assert len(prompt_logprobs) == len(PROMPT) and prompt_logprobs[0] is None
    assert set(prompt_logprobs[1]) == {str(PROMPT[1])}
    assert data["usage"]["completion_tokens"] == 6


def test_a_stream_sends_token_ids_then_usage_then_done(
    client: httpx.Client, worker: FakeWorker
) -> None:
    body = {
        "token_ids": PROMPT,
        "sampling_params": {"max_tokens": 3},
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    answer = client.post(PATH, json=body, headers={"X-Request-Id": "s-1"})
    assert answer.status_code == 200
    chunks = events(answer)
    assert {c["request_id"] for c in chunks} == {"generate-tokens-s-1"}
    *tokens, usage = chunks
    assert [t for c in tokens for t in c["choices"][0]["token_ids"]] == worker.script[:3]
    assert tokens[-1]["choices"][0]["finish_reason"] == "length"
    assert [c["usage"]["completion_tokens"] for c in tokens] == [1, 2, 3]
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 3
    assert usage["usage"]["prompt_tokens_details"]["cached_tokens"] == CACHED_TOKENS
    plain = client.post(PATH, json={**body, "stream_options": None})
    assert all("usage" not in c or c["usage"] is None for c in events(plain))


def test_what_cannot_be_served_is_refused_before_anything_is_queued(
    client: httpx.Client, worker: FakeWorker
) -> None:
    def sampling(**params: object) -> dict:
        return {"token_ids": PROMPT, "sampling_params": params}

    cases = [
        ({"token_ids": []}, "token_ids"),
        ({"token_ids": [-1]}, "token_ids"),
        ({"token_ids": [10**7]}, "token_ids"),
        (sampling(temperature="hot"), "sampling_params.temperature"),
        (sampling(top_p=0), "sampling_params.top_p"),
        (sampling(max_tokens=0), "sampling_params.max_tokens"),
        (sampling(logprobs=10**6), "sampling_params.logprobs"),
        (sampling(structured_outputs={"json": {}}), "sampling_params.structured_outputs"),
        (sampling(n=2, best_of=3), "sampling_params.best_of"),
        ({"token_ids": PROMPT, "kv_transfer_params": {"x": 1}}, "kv_transfer_params"),
        ({"token_ids": [1] * MAX_MODEL_LEN}, "token_ids"),
        (sampling(max_tokens=MAX_MODEL_LEN), "token_ids"),
    ]
    for body, param in cases:
        answer = client.post(PATH, json=body)
        assert answer.status_code == 400, (body, answer.text)
        assert answer.json()["error"]["param"] == param, (body, answer.json())
    assert client.post(PATH, json={**cases[0][0], "model": "nope"}).status_code in (400, 404)
    assert not worker.received
