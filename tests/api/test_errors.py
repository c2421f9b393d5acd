"""Every failure answers in OpenAI's error shape with the right status (400, never 422)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
import redis

from api.errors import validation_error
from conveyor.served_names import mark_expected_known

from .conftest import MAX_MODEL_LEN, MODEL, Stack
from .fakes import FakeWorker

MESSAGES = [{"role": "user", "content": "hi"}]


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 1.5}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": -1}, "max_completion_tokens"),
        ({"stop": ["x"] * 17}, "stop"),
        ({"stop": 5}, "stop"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"1": 500}}, "logit_bias"),
        ({"logit_bias": {"999999": 1}}, "logit_bias"),
        ({"stop_token_ids": [999999]}, "stop_token_ids"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
        ({"messages": []}, "messages"),
        ({"messages": [{"content": "no role"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
        ({"seed": 2**70}, "seed"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"model": 5}, "model"),
        ({"service_tier": "bogus"}, "service_tier"),
        ({"metadata": "x"}, "metadata"),
        ({"metadata": {"a": 1}}, "metadata.a"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        ({"store": "maybe"}, "store"),
        ({"modalities": ["video"]}, "modalities[0]"),
    ],
)
def test_chat_validation_is_400_naming_param(client: httpx.Client, patch: dict, param: str) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 2, **patch}
    error = error_of(client.post("/v1/chat/completions", json=body), 400)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert param.split("[")[0] in error["message"] or error["param"] == "messages"


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"prompt": []}, "prompt"),
        ({"prompt": [1, "a"]}, "prompt"),
        ({"prompt": [[1, 2], []]}, "prompt"),
        ({"prompt": [10**9]}, "prompt"),
        ({"logprobs": 21}, "logprobs"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
        ({"best_of": 3}, "best_of"),
        ({"suffix": "end"}, "suffix"),
    ],
)
def test_completions_validation_is_400_naming_param(
    client: httpx.Client, patch: dict, param: str
) -> None:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, **patch}
    error = error_of(client.post("/v1/completions", json=body), 400)
    assert error["param"] == param


def test_malformed_bodies_are_400(client: httpx.Client) -> None:
    for content in (b"{not json", b"[1, 2]", b""):
        response = client.post(
            "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
        )
        error_of(response, 400)


def test_our_validators_speak_without_pydantics_tag() -> None:
    """A validator's ValueError reads as written, not as "Value error, ..."."""
    from pydantic import ValidationError

    from api.schemas.batches import BatchCreate

    with pytest.raises(ValidationError) as caught:
        BatchCreate.model_validate(
            {
                "input_file_id": "file-x",
                "endpoint": "/v1/completions",
                "completion_window": "24h",
                "metadata": {f"k{i}": "v" for i in range(17)},
            }
        )
    error = validation_error(caught.value.errors())
    assert error.message == "metadata: at most 16 key-value pairs"
    assert error.param == "metadata"


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tool_choice"),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto"},
            "tool_choice",
        ),
        ({"response_format": {"type": "structural_tag"}}, "response_format"),
        ({"structured_outputs": {"structural_tag": {"x": 1}}}, "structured_outputs.structural_tag"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
    ],
)
def test_unsupported_features_are_refused(client: httpx.Client, patch: dict, param: str) -> None:
    body = {"model": MODEL, "messages": MESSAGES, **patch}
    error = error_of(client.post("/v1/chat/completions", json=body), 400)
    assert error["param"] == param
    assert "not supported yet" in error["message"]


def test_tools_with_tool_choice_none_and_text_format_are_fine(client: httpx.Client) -> None:
    body = {
        "model": MODEL,
        "messages": MESSAGES,
        "max_tokens": 1,
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": "none",
        "response_format": {"type": "text"},
    }
    assert client.post("/v1/chat/completions", json=body).status_code == 200


def test_unknown_model_is_404(client: httpx.Client) -> None:
    for path, body in (
        ("/v1/chat/completions", {"model": "nope", "messages": MESSAGES}),
        ("/v1/completions", {"model": "nope", "prompt": "hi"}),
    ):
        error = error_of(client.post(path, json=body), 404)
        assert error["message"] == "The model `nope` does not exist"
        assert error["code"] == "model_not_found"
        assert error["param"] == "model"
    error_of(client.get("/v1/models/nope"), 404)


def test_known_model_without_worker_is_503(client: httpx.Client, stack: Stack) -> None:
    store = redis.Redis.from_url(stack.redis_url)
    store.set(stack.names.known_model("retired"), "1")
    response = client.post("/v1/completions", json={"model": "retired", "prompt": "hi"})
    error = error_of(response, 503)
    assert error["code"] == "no_worker"
    assert response.headers["retry-after"]


def test_a_model_still_loading_is_503_with_or_without_its_name(
    make_stack: Callable[..., Stack],
) -> None:
    """Before a worker's first announce (its model loading): the names it will serve are
    marked known at its start, so a request is a 503 to retry, not a 404 saying the model
    does not exist (nor, naming no model, a 400)."""
    stack = make_stack(with_worker=False)
    settings = stack.server.settings
    with stack.client() as http:
        assert error_of(http.post("/v1/completions", json={"prompt": "hi"}), 400)
        body = {"model": "SmolLM2-135M-Instruct", "prompt": "hi"}
        assert error_of(http.post("/v1/completions", json=body), 404)
        mark_expected_known(settings, stack.redis_url)
        for sent in (body, {"prompt": "hi"}):
            response = http.post("/v1/completions", json=sent)
            assert error_of(response, 503)["code"] == "no_worker"
            assert response.headers["retry-after"] == "5"


def test_a_model_whose_only_worker_drains_is_503_not_queued(
    client: httpx.Client, stack: Stack
) -> None:
    """Requests queued for a draining worker waited for one that might never come (QA:
    475 s, until the worker was started again); its heartbeat now says it drains."""
    store = redis.Redis.from_url(stack.redis_url)
    store.set(stack.names.known_model("leaving"), "1")
    beat = {"model": "leaving", "instance": "w-leaving", "capacity": 8, "draining": True}
    store.set(stack.names.worker("leaving", "w-leaving"), json.dumps(beat), ex=30)
    time.sleep(1.2)  # the catalog's scan interval
    response = client.post("/v1/completions", json={"model": "leaving", "prompt": "hi"})
    assert error_of(response, 503)["code"] == "no_worker"
    assert "leaving" not in {m["id"] for m in client.get("/v1/models").json()["data"]}
    store.set(stack.names.worker("leaving", "w-leaving"), json.dumps({**beat, "draining": False}))
    time.sleep(1.2)
    assert "leaving" in {m["id"] for m in client.get("/v1/models").json()["data"]}
    store.delete(stack.names.worker("leaving", "w-leaving"))


def test_unknown_route_is_openai_shaped_404(client: httpx.Client) -> None:
    error_of(client.get("/v1/nothing-here"), 404)
    error_of(client.get("/v1/chat/completions"), 405)


def test_over_long_prompt_states_both_numbers(client: httpx.Client) -> None:
    long_text = "hello " * 400
    error = error_of(
        client.post(
            "/v1/completions", json={"model": MODEL, "prompt": long_text, "max_tokens": 10}
        ),
        400,
    )
    assert f"maximum context length is {MAX_MODEL_LEN} tokens" in error["message"]
    assert "10 in the completion" in error["message"]
    assert error["code"] == "context_length_exceeded"
    # Chat with explicit max_tokens: prompt + completion > context.
    error = error_of(
        client.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_MODEL_LEN},
        ),
        400,
    )
    assert str(MAX_MODEL_LEN) in error["message"]
    assert f"{MAX_MODEL_LEN} in the completion" in error["message"]
    assert "in the messages" in error["message"]
    # Chat without max_tokens: the prompt alone must leave room.
    error = error_of(
        client.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": long_text}]},
        ),
        400,
    )
    assert str(MAX_MODEL_LEN) in error["message"]


@pytest.fixture()
def small_stack(make_stack: Callable[..., Stack]) -> Iterator[Stack]:
    yield make_stack(max_body_bytes=2000, max_queued_requests=2, request_timeout=1.0)


def test_body_too_large_is_413(small_stack: Stack) -> None:
    big = {"model": MODEL, "prompt": "x" * 5000}
    with small_stack.client() as http:
        error = error_of(http.post("/v1/completions", json=big), 413)
        assert error["code"] == "request_too_large"

        def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it streams
            yield b'{"model": "fake-model", "prompt": "'
            for _ in range(10):
                yield b"x" * 500
            yield b'"}'

        response = http.post(
            "/v1/completions", content=chunked(), headers={"content-type": "application/json"}
        )
        error_of(response, 413)


def test_async_clients_read_the_413_of_a_body_they_are_still_sending(small_stack: Stack) -> None:
    """An answer sent while the client is still writing, then a close, resets the connection:
    async httpx (AsyncOpenAI, the batch worker) saw a ReadError instead of the 413."""
    big = {"model": MODEL, "prompt": "x" * 3_000_000}

    async def post_big() -> list[int]:
        statuses = []
        async with httpx.AsyncClient(base_url=small_stack.url, timeout=10) as http:
            for _ in range(3):
                statuses.append((await http.post("/v1/completions", json=big)).status_code)

            async def chunked() -> AsyncIterator[bytes]:
                yield b'{"model": "fake-model", "prompt": "'
                for _ in range(100):
                    yield b"x" * 30_000
                yield b'"}'

            response = await http.post(
                "/v1/completions", content=chunked(), headers={"content-type": "application/json"}
            )
            statuses.append(response.status_code)
        return statuses

    assert asyncio.run(post_big()) == [413] * 4


def test_overload_is_503_with_retry_after(small_stack: Stack) -> None:
    small_stack.worker.behaviour = "paused"
    assert small_stack.worker.paused.wait(5)  # a read already blocking has returned
    store = redis.Redis.from_url(small_stack.redis_url)
    stream = small_stack.names.requests(MODEL)
    for i in range(3):
        store.xadd(stream, {"data": f"queued-{i}"})
    with small_stack.client() as http:
        response = http.post("/v1/completions", json={"model": MODEL, "prompt": "hi"})
        error = error_of(response, 503)
        assert error["code"] == "overloaded"
        assert response.headers["retry-after"] == "1"
        metrics = http.get("/metrics").text
    lane = f'{{lane="interactive",model="{MODEL}"}}'
    assert f"conveyor:queue_length{lane} 3.0" in metrics
    assert f"conveyor:queue_undelivered{lane} 3.0" in metrics
    # vLLM's gauge counts them too (worker="queue"), so its dashboards see the overload.
    assert f'vllm:num_requests_waiting{{model_name="{MODEL}",worker="queue"}} 3.0' in metrics
    assert f"conveyor:queue_pending{lane} 0.0" in metrics
    assert f'conveyor:queue_length{{lane="batch",model="{MODEL}"}} 0.0' in metrics
    assert f'conveyor:dead_letters{{model="{MODEL}"}} 0.0' in metrics


def test_a_burst_cannot_slip_past_the_queue_limit(small_stack: Stack) -> None:
    """20 requests at the same instant, no worker taking any, 2 may wait: 2 are queued
    (and time out), 18 get an immediate 503. Before, every request of a burst saw an
    empty queue at its check and all 20 were queued."""
    small_stack.worker.behaviour = "paused"
    assert small_stack.worker.paused.wait(5)
    store = redis.Redis.from_url(small_stack.redis_url)
    stream = small_stack.names.requests(MODEL)
    start = threading.Barrier(20)
    statuses: list[int] = []
    most_queued = 0

    def post() -> None:
        with small_stack.client() as http:
            start.wait()
            body = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
            statuses.append(http.post("/v1/completions", json=body).status_code)

    threads = [threading.Thread(target=post) for _ in range(20)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        most_queued = max(most_queued, store.xlen(stream))
        time.sleep(0.01)
    assert sorted(statuses) == [503] * 18 + [504] * 2
    assert most_queued <= 2


def test_reply_that_never_comes_times_out(small_stack: Stack) -> None:
    small_stack.worker.behaviour = "silent"
    with small_stack.client() as http:
        response = http.post(
            "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2}
        )
        error = error_of(response, 504)
        assert error["code"] == "timeout"
        with http.stream(
            "POST",
            "/v1/completions",
            json={"model": MODEL, "prompt": "hi", "max_tokens": 2, "stream": True},
        ) as stream:
            lines = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert '"code": "timeout"' in lines[-2] or '"code":"timeout"' in lines[-2]
    assert lines[-1] == "data: [DONE]"


def test_worker_error_keeps_its_status(client: httpx.Client, worker: FakeWorker) -> None:
    worker.behaviour = "error"
    response = client.post("/v1/completions", json={"model": MODEL, "prompt": "hi"})
    error = error_of(response, 503)
    assert error["code"] == "oom"
    assert "out of memory" in error["message"]
