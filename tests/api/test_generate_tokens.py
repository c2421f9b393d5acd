"""POST /inference/v1/generate (vLLM's tokens in, tokens out) over HTTP against a scripted
worker: vLLM's shapes, its id naming, its sampling fields passed through, and refusals
before anything is queued. The real engine's answers are in
tests/e2e/test_generate_tokens.py."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx

from .conftest import MAX_MODEL_LEN, MODEL, Stack, log_row
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
    # A numeric string is read as vLLM's pydantic reads it (it was a 500).
    body["sampling_params"]["max_tokens"] = "4"
    assert client.post(PATH, json=body).json()["usage"]["completion_tokens"] == 4


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
    first, second = worker.script[:2]
    assert [entry["token"] for entry in content] == [f"token_id:{t}" for t in worker.script[:3]]
    assert content[0]["logprob"] == -0.5
    assert [top["token"] for top in content[0]["top_logprobs"]] == [f"token_id:{first}"]
    # vLLM's list: the token itself first, then the likeliest others, max(logprobs, 1).
    # The fake worker's alternatives are the token, script[0] and script[1], in that order.
    other = data["choices"][1]["logprobs"]["content"][0]  # its token is script[1]
    assert [top["token"] for top in other["top_logprobs"]] == [f"token_id:{second}"]
    zero = {"max_tokens": 1, "logprobs": 0}
    (only,) = client.post(PATH, json={"token_ids": PROMPT, "sampling_params": zero}).json()[
        "choices"
    ][0]["logprobs"]["content"]
    assert [top["token"] for top in only["top_logprobs"]] == [f"token_id:{first}"]
    three = {"max_tokens": 2, "logprobs": 3}
    answer = client.post(PATH, json={"token_ids": PROMPT, "sampling_params": three}).json()
    listed = answer["choices"][0]["logprobs"]["content"][1]  # token script[1]
    assert [top["token"] for top in listed["top_logprobs"]] == [
        f"token_id:{second}",
        f"token_id:{first}",
    ]
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
        (sampling(structured_outputs={"regex": "("}), "sampling_params.structured_outputs"),
        (
            sampling(structured_outputs={"regex": "a", "choice": ["a"]}),
            "sampling_params.structured_outputs",
        ),
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


def test_the_request_log_has_its_timings_and_an_early_stops_cached_tokens(
    stack: Stack, client: httpx.Client, worker: FakeWorker
) -> None:
    answer = client.post(PATH, json={"token_ids": PROMPT, "sampling_params": {"max_tokens": 2}})
    row = log_row(stack, answer.json()["id"])
    assert row.endpoint == PATH and row.ttft is not None and row.queue_time is not None
    worker.behaviour = "slow"  # a token every 50 ms
    body = {"token_ids": PROMPT, "sampling_params": {"max_tokens": 100}, "stream": True}
    with client.stream("POST", PATH, json=body) as stream:
        first = json.loads(next(stream.iter_lines()).removeprefix("data: "))
    row = log_row(stack, first["request_id"])
    assert row.completion_tokens >= 1 and row.cached_tokens == CACHED_TOKENS


def test_a_priority_needs_priority_scheduling(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(scheduling_policy="fcfs")
    with stack.client() as http:
        body = {"token_ids": PROMPT, "priority": 5}
        answer = http.post(PATH, json=body)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "priority"
        assert http.post(PATH, json={**body, "priority": 0}).status_code == 200


def test_a_constraint_binds_a_reasoning_models_answer_as_chat_binds_it(
    make_stack: Callable[..., Stack],
) -> None:
    """Where the output starts is read from the prompt's end, as chat reads its turn."""
    constraint = {"structured_outputs": {"json_object": True}}
    for parser, prompt, after in (
        ("deepseek_r1", "User: hi\nAssistant: <think>\n", "inside"),
        ("qwen3", "User: hi\nAssistant:", "if_opened"),
    ):
        stack = make_stack(reasoning_parser=parser)
        with stack.client() as http:
            ids = http.post("/tokenize", json={"prompt": prompt}).json()["tokens"]
            body = {"token_ids": ids, "sampling_params": constraint}
            assert http.post(PATH, json=body).status_code == 200
        sampling = stack.worker.received[-1].sampling
        assert sampling["structured_output"]["after_thinking"] == after, parser
    stack = make_stack(reasoning_parser="seed_oss")
    with stack.client() as http:
        answer = http.post(PATH, json={"token_ids": PROMPT, "sampling_params": constraint})
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "sampling_params.structured_outputs"
