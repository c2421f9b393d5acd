"""vLLM's render endpoints over HTTP against a scripted worker: the rendered request is
what the chat or completion would have queued, nothing is queued by rendering, and
posting it to /inference/v1/generate queues the same prompt with the same sampling."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from .conftest import MODEL, Stack
from .fakes import FakeWorker

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
        },
    }
]


def queued_by_chat_and_by_its_render(
    http: httpx.Client, worker: FakeWorker, body: dict[str, Any]
) -> tuple[Any, Any]:
    """The request a chat queues, and the one its render queues through the tokens
    endpoint; the render alone queues nothing."""
    assert http.post("/v1/chat/completions", json=body).status_code == 200
    direct = worker.received[-1]
    count = len(worker.received)
    rendered = http.post("/v1/chat/completions/render", json=body)
    assert rendered.status_code == 200, rendered.text
    assert len(worker.received) == count  # nothing queued by rendering
    generated = http.post("/inference/v1/generate", json=rendered.json())
    assert generated.status_code == 200, generated.text
    return direct, worker.received[-1]


def test_a_rendered_chat_samples_as_the_chat_would(
    client: httpx.Client, worker: FakeWorker
) -> None:
    for extra in (
        {},
        {"temperature": 0.3, "top_p": 0.9, "seed": 4, "stop": ["x"], "logprobs": True},
        {"response_format": {"type": "json_object"}, "max_completion_tokens": 9},
        {"tools": TOOLS, "tool_choice": "required", "top_logprobs": 2, "logprobs": True},
        {"structured_outputs": {"choice": ["Paris", "Lyon"]}, "logit_bias": {"5": -2}},
    ):
        body = {"model": MODEL, "messages": MESSAGES, **extra}
        direct, through_render = queued_by_chat_and_by_its_render(client, worker, body)
        assert through_render.prompt_token_ids == direct.prompt_token_ids, extra
        assert through_render.sampling == direct.sampling, extra


def test_the_rendered_request_is_vllms_generate_request(client: httpx.Client) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "stream": True, "priority": 0}
    rendered = client.post("/v1/chat/completions/render", json=body).json()
    assert rendered["request_id"].startswith("chatcmpl-")
    assert rendered["model"] == MODEL and rendered["stream"] is True
    tokenized = client.post("/tokenize", json={"model": MODEL, "messages": MESSAGES}).json()
    assert rendered["token_ids"] == tokenized["tokens"]
    params = rendered["sampling_params"]
    assert params["temperature"] == 1.0 and params["n"] == 1
    assert params["structured_outputs"] is None


def test_a_reasoning_models_constraint_is_bound_alike_both_ways(
    make_stack: Callable[..., Stack],
) -> None:
    """The render states the binding chat read from the model's own turn: the prompt's
    end alone would decide otherwise where a message quotes the think tags."""
    stack = make_stack(reasoning_parser="qwen3")
    json_object = {"response_format": {"type": "json_object"}}
    with stack.client() as http:
        for messages, after in (
            (MESSAGES, "if_opened"),
            ([{"role": "user", "content": "Is <think>x</think> valid?"}], "if_opened"),
            ([{"role": "user", "content": "Say <think> twice"}], "if_opened"),
        ):
            body = {"model": MODEL, "messages": messages, **json_object}
            direct, through_render = queued_by_chat_and_by_its_render(http, stack.worker, body)
            assert direct.sampling["structured_output"]["after_thinking"] == after
            assert through_render.sampling == direct.sampling, messages


def test_a_completions_unbound_constraint_stays_unbound_through_a_render(
    make_stack: Callable[..., Stack],
) -> None:
    """Completions bind no constraint to thinking; the render says so, even where the
    tokens endpoint would bind (qwen3) or refuse (seed_oss) one by the prompt's end."""
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 5}
    body["structured_outputs"] = {"choice": ["a", "b"]}
    for parser in ("qwen3", "seed_oss"):
        stack = make_stack(reasoning_parser=parser)
        with stack.client() as http:
            assert http.post("/v1/completions", json=body).status_code == 200
            direct = stack.worker.received[-1]
            (rendered,) = http.post("/v1/completions/render", json=body).json()
            generated = http.post("/inference/v1/generate", json=rendered)
            assert generated.status_code == 200, (parser, generated.text)
        assert direct.sampling["structured_output"]["after_thinking"] is None
        assert stack.worker.received[-1].sampling == direct.sampling, parser


def test_a_completion_renders_one_request_per_prompt(
    client: httpx.Client, worker: FakeWorker
) -> None:
    body = {"model": MODEL, "prompt": ["Hello", "Bonjour"], "max_tokens": 5, "top_k": 3}
    rendered = client.post("/v1/completions/render", json=body)
    assert rendered.status_code == 200, rendered.text
    first, second = rendered.json()
    assert first["request_id"] != second["request_id"]
    assert first["request_id"].startswith("cmpl-")
    assert first["sampling_params"]["max_tokens"] == 5
    assert first["sampling_params"]["top_k"] == 3
    assert not worker.received
    assert client.post("/v1/completions", json={**body, "prompt": "Bonjour"}).status_code == 200
    direct = worker.received[-1]
    client.post("/inference/v1/generate", json=second)
    assert worker.received[-1].prompt_token_ids == direct.prompt_token_ids
    assert worker.received[-1].sampling == direct.sampling


def test_what_the_tokens_endpoint_cannot_take_is_refused(client: httpx.Client) -> None:
    chat = {"model": MODEL, "messages": MESSAGES, "n": 2, "use_beam_search": True}
    assert client.post("/v1/chat/completions/render", json=chat).status_code == 400
    echo = {"model": MODEL, "prompt": "Hi", "echo": True}
    answer = client.post("/v1/completions/render", json=echo)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "echo"
