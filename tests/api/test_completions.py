"""POST /v1/completions: prompt forms, n, echo + logprobs (scoring), streaming."""

from __future__ import annotations

import time

import httpx
import pytest

from .conftest import MODEL, Stack, worker_on
from .fakes import FakeWorker
from .test_chat import stream_chunks


def complete(client: httpx.Client, **body: object) -> dict:
    response = client.post("/v1/completions", json={"model": MODEL, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_single_prompt_defaults_to_16_tokens(client: httpx.Client, worker: FakeWorker) -> None:
    body = complete(client, prompt="Count:")
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    (choice,) = body["choices"]
    assert choice["text"] == " one two three four five six seven eight nine ten"
    assert choice["finish_reason"] == "stop"  # the script ran out before 16 tokens
    assert choice["logprobs"] is None
    request = worker.received[-1]
    assert request.sampling["max_tokens"] == 16
    assert request.prompt_token_ids == worker.tokenizer.encode("Count:")
    assert body["usage"]["prompt_tokens"] == len(request.prompt_token_ids)


def test_max_tokens_sent_as_null_fills_the_context_as_vllm_reads_it(
    client: httpx.Client, worker: FakeWorker
) -> None:
    """vLLM's field is `Optional[int] = 16`: left out it is 16, null is no cap but the
    context (QA: null was taken as 16)."""
    complete(client, prompt=["Count:", "a"], max_tokens=None)
    assert [r.sampling["max_tokens"] for r in worker.received[-2:]] == [None, None]
    complete(client, prompt="Count:")
    assert worker.received[-1].sampling["max_tokens"] == 16


def test_prompt_forms_and_choice_order(client: httpx.Client, worker: FakeWorker) -> None:
    ids = worker.tokenizer.encode("Count:")
    for prompt in ("Count:", ids):
        body = complete(client, prompt=prompt, max_tokens=2)
        assert [c["text"] for c in body["choices"]] == [" one two"]
    body = complete(client, prompt=["a", "b"], max_tokens=2, n=2)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert [c["text"] for c in body["choices"]] == [" one two", " two three"] * 2
    assert len(worker.received) == 4  # one queued request per prompt
    prompts = sorted(r.prompt_token_ids for r in worker.received[-2:])
    assert prompts == sorted([worker.tokenizer.encode("a"), worker.tokenizer.encode("b")])
    body = complete(client, prompt=[ids, ids[:1]], max_tokens=1)
    assert [c["text"] for c in body["choices"]] == [" one", " one"]
    assert body["usage"]["prompt_tokens"] == len(ids) + 1
    assert body["usage"]["completion_tokens"] == 2


def test_logprobs_shape(client: httpx.Client, worker: FakeWorker) -> None:
    body = complete(client, prompt="Count:", max_tokens=3, logprobs=2)
    lp = body["choices"][0]["logprobs"]
    assert lp["tokens"] == [" one", " two", " three"]
    assert lp["token_logprobs"] == [-0.5, -0.5, -0.5]
    assert lp["text_offset"] == [0, 4, 8]
    assert lp["top_logprobs"][1] == {" two": -0.5, " one": -1.5}
    assert worker.received[-1].sampling["prompt_logprobs"] is None


def test_echo_with_logprobs_scores_the_prompt(client: httpx.Client, worker: FakeWorker) -> None:
    prompt = "The capital of France is"
    body = complete(client, prompt=prompt, max_tokens=2, echo=True, logprobs=1)
    choice = body["choices"][0]
    assert choice["text"] == prompt + " one two"
    prompt_ids = worker.tokenizer.encode(prompt)
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(prompt_ids) + 2
    assert "".join(lp["tokens"]) == prompt + " one two"
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(v == -0.5 for v in lp["token_logprobs"][1:])
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    assert worker.received[-1].sampling["prompt_logprobs"] == 1


def test_echo_with_max_tokens_zero(client: httpx.Client, worker: FakeWorker) -> None:
    prompt = "Score this sentence."
    body = complete(client, prompt=prompt, max_tokens=0, echo=True, logprobs=0)
    choice = body["choices"][0]
    assert choice["text"] == prompt
    prompt_ids = worker.tokenizer.encode(prompt)
    assert len(choice["logprobs"]["tokens"]) == len(prompt_ids)
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 0
    assert worker.received[-1].sampling["max_tokens"] == 1  # generated, then discarded


def test_stream_multi_prompt_with_usage(client: httpx.Client, worker: FakeWorker) -> None:
    chunks, _ = stream_chunks(
        client,
        "/v1/completions",
        {
            "model": MODEL,
            "prompt": ["a", "b"],
            "max_tokens": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert all(c["object"] == "text_completion" for c in chunks)
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for chunk in chunks[:-1]:
        (choice,) = chunk["choices"]
        texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
        if choice["finish_reason"]:
            finishes[choice["index"]] = choice["finish_reason"]
    assert texts == {0: " one two", 1: " one two"}
    assert finishes == {0: "length", 1: "length"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


def test_stream_echo_logprobs(client: httpx.Client, worker: FakeWorker) -> None:
    prompt = "Hello there"
    chunks, _ = stream_chunks(
        client,
        "/v1/completions",
        {
            "model": MODEL,
            "prompt": prompt,
            "max_tokens": 2,
            "stream": True,
            "echo": True,
            "logprobs": 1,
        },
    )
    first = chunks[0]["choices"][0]
    assert first["text"] == prompt
    assert first["logprobs"]["token_logprobs"][0] is None
    assert len(first["logprobs"]["tokens"]) == len(worker.tokenizer.encode(prompt))
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == prompt + " one two"
    offsets = [o for c in chunks for o in c["choices"][0]["logprobs"]["text_offset"]]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)


def test_the_model_may_be_left_out_while_one_model_is_served(
    client: httpx.Client, stack: Stack, worker: FakeWorker
) -> None:
    """As in vLLM, a request without `model` goes to the one model served; with two
    served it must say which."""
    for path, body in (
        ("/v1/completions", {"prompt": "Count:", "max_tokens": 2}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ):
        response = client.post(path, json=body)
        assert response.status_code == 200, response.text
        assert response.json()["model"] == MODEL
    with worker_on(stack, "other-model"):
        deadline = time.monotonic() + 10
        while {c["id"] for c in client.get("/v1/models").json()["data"]} != {MODEL, "other-model"}:
            assert time.monotonic() < deadline, "the second worker never showed up"
            time.sleep(0.1)
        response = client.post("/v1/completions", json={"prompt": "Count:"})
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["param"] == "model" and "exactly one model" in error["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_an_empty_text_prompt_is_a_400_before_any_stream_opens(
    client: httpx.Client, worker: FakeWorker, stream: bool
) -> None:
    body = {"model": MODEL, "prompt": "", "max_tokens": 4, "stream": stream}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "prompt"
    assert worker.received == []


def test_continuous_usage_counts_each_chunks_own_prompt_and_choice(
    client: httpx.Client, worker: FakeWorker
) -> None:
    """vLLM's: a chunk's usage is its prompt's tokens and its choice's so far; the final
    usage chunk sums them all."""
    prompts = ["Count:", "Count to ten slowly:"]
    chunks, _ = stream_chunks(
        client,
        "/v1/completions",
        {
            "model": MODEL,
            "prompt": prompts,
            "max_tokens": 3,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        },
    )
    lengths = [len(worker.tokenizer.encode(p)) for p in prompts]
    assert lengths[0] != lengths[1]
    seen: dict[int, list[tuple[int, int]]] = {}
    for c in chunks[:-1]:
        (choice,) = c["choices"]
        usage = c["usage"]
        seen.setdefault(choice["index"], []).append(
            (usage["prompt_tokens"], usage["completion_tokens"])
        )
    assert seen == {i: [(lengths[i], k) for k in (1, 2, 3)] for i in (0, 1)}
    assert chunks[-1]["usage"]["prompt_tokens"] == sum(lengths)
    assert chunks[-1]["usage"]["completion_tokens"] == 6
