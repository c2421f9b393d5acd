"""What a worker serves beyond its tokenizer: sampling defaults (--generation-config,
--override-generation-config) and the logprobs limit (--max-logprobs), as the API applies
them before anything is queued."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from .conftest import Stack, worker_on
from .fakes import FakeWorker

TUNED = "tuned-model"
DEFAULTS = {"temperature": 0.25, "top_k": 7, "repetition_penalty": 1.1, "max_new_tokens": 4}


@pytest.fixture()
def tuned(make_stack: Callable[..., Stack]) -> Iterator[tuple[httpx.Client, FakeWorker]]:
    stack = make_stack(with_worker=False)
    with (
        worker_on(stack, TUNED, generation=DEFAULTS, published_config={"max_logprobs": 2}) as w,
        stack.client() as client,
    ):
        yield client, w


def _complete(client: httpx.Client, **body: object) -> httpx.Response:
    return client.post("/v1/completions", json={"model": TUNED, "prompt": "Hi", **body})


def _chat(client: httpx.Client, **body: object) -> httpx.Response:
    messages = [{"role": "user", "content": "Hi"}]
    return client.post("/v1/chat/completions", json={"model": TUNED, "messages": messages, **body})


def test_defaults_fill_only_what_the_request_leaves_unset(
    tuned: tuple[httpx.Client, FakeWorker],
) -> None:
    client, worker = tuned
    assert _complete(client).status_code == 200
    sampling = worker.received[-1].sampling
    assert (sampling["temperature"], sampling["top_k"]) == (0.25, 7)
    assert sampling["repetition_penalty"] == 1.1
    assert _chat(client, temperature=1.0, top_k=3).status_code == 200
    sampling = worker.received[-1].sampling
    assert (sampling["temperature"], sampling["top_k"]) == (1.0, 3)
    assert sampling["repetition_penalty"] == 1.1


@pytest.mark.parametrize("send", [_complete, _chat])
def test_max_new_tokens_caps_every_request(
    tuned: tuple[httpx.Client, FakeWorker], send: Callable[..., httpx.Response]
) -> None:
    """As vLLM: the served max_new_tokens is a default and a ceiling."""
    client, worker = tuned
    for asked, sent in ((None, 4), (100, 4), (2, 2)):
        body = {} if asked is None else {"max_tokens": asked}
        response = send(client, **body)
        assert response.status_code == 200, response.text
        assert worker.received[-1].sampling["max_tokens"] == sent
        assert response.json()["usage"]["completion_tokens"] <= sent


def test_logprobs_past_the_servers_limit_are_refused(
    tuned: tuple[httpx.Client, FakeWorker],
) -> None:
    client, worker = tuned
    assert _complete(client, logprobs=2).status_code == 200
    received = len(worker.received)
    refused = _complete(client, logprobs=3)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "logprobs"
    assert "at most 2" in error["message"] and "--max-logprobs" in error["message"]
    refused = _chat(client, logprobs=True, top_logprobs=3)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "top_logprobs"
    assert len(worker.received) == received  # nothing refused was queued


def test_a_worker_serving_no_defaults_leaves_openais(
    client: httpx.Client, worker: FakeWorker
) -> None:
    """The module stack's worker publishes none (--generation-config vllm): OpenAI's
    defaults, and logprobs up to vLLM's default limit of 20."""
    body = {"model": "fake-model", "prompt": "Hi", "logprobs": 20}
    assert client.post("/v1/completions", json=body).status_code == 200
    sampling = worker.received[-1].sampling
    assert (sampling["temperature"], sampling["top_k"], sampling["max_tokens"]) == (1.0, 0, 16)
    body["logprobs"] = 21
    assert client.post("/v1/completions", json=body).status_code == 400


@pytest.mark.parametrize("send", [_complete, _chat])
def test_beam_search_takes_only_the_served_length_cap(
    tuned: tuple[httpx.Client, FakeWorker], send: Callable[..., httpx.Response]
) -> None:
    """A beam search samples nothing: the model's sampling defaults stay out of it (its
    repetition_penalty would refuse it); the served max_new_tokens still caps it."""
    client, worker = tuned
    response = send(client, n=2, use_beam_search=True, length_penalty=0.5)
    assert response.status_code == 200, response.text
    sampling = worker.received[-1].sampling
    assert (sampling["use_beam_search"], sampling["length_penalty"]) == (True, 0.5)
    assert (sampling["n"], sampling["max_tokens"], sampling["repetition_penalty"]) == (2, 4, 1.0)
    # Without beam search the new fields stay off the wire (an older worker serves these),
    # a length_penalty that would score nothing included.
    for body in ({}, {"length_penalty": 0.5}):
        assert send(client, **body).status_code == 200
        assert not {"use_beam_search", "length_penalty"} & set(worker.received[-1].sampling)


@pytest.mark.parametrize(
    ("send", "body", "asked"),
    [
        (_chat, {"logprobs": True}, 0),
        (_chat, {"logprobs": True, "top_logprobs": 2}, 2),
        (_complete, {"logprobs": 1}, 1),
    ],
)
def test_beam_search_takes_logprobs(
    tuned: tuple[httpx.Client, FakeWorker],
    send: Callable[..., httpx.Response],
    body: dict[str, object],
    asked: int,
) -> None:
    """Each hypothesis reports its tokens' logprobs, as vLLM's beam search does."""
    client, worker = tuned
    response = send(client, use_beam_search=True, **body)
    assert response.status_code == 200, response.text
    assert worker.received[-1].sampling["logprobs"] == asked


@pytest.mark.parametrize(
    ("send", "body", "param"),
    [
        (_chat, {"stop": "."}, "stop"),
        (_chat, {"response_format": {"type": "json_object"}}, "response_format"),
        (_complete, {"frequency_penalty": 0.5}, "frequency_penalty"),
        (_complete, {"repetition_penalty": 1.2}, "repetition_penalty"),
    ],
)
def test_what_beam_search_cannot_honour_is_a_400_naming_it(
    tuned: tuple[httpx.Client, FakeWorker],
    send: Callable[..., httpx.Response],
    body: dict[str, object],
    param: str,
) -> None:
    client, worker = tuned
    queued = len(worker.received)
    response = send(client, use_beam_search=True, **body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["message"] == f"{param}: cannot be combined with use_beam_search"
    assert len(worker.received) == queued


def test_tokens_in_tokens_out_takes_only_the_served_cap_and_only_when_left_out(
    tuned: tuple[httpx.Client, FakeWorker],
) -> None:
    """As vLLM's /inference/v1/generate: its SamplingParams defaults, and max_new_tokens
    for a max_tokens left out (one it names is taken as it is)."""
    client, worker = tuned
    for asked, sent in ((None, 4), (100, 100)):
        params = {} if asked is None else {"max_tokens": asked}
        body = {"model": TUNED, "token_ids": [11, 12], "sampling_params": params}
        response = client.post("/inference/v1/generate", json=body)
        assert response.status_code == 200, response.text
        sampling = worker.received[-1].sampling
        assert sampling["max_tokens"] == sent
        assert (sampling["temperature"], sampling["top_k"]) == (1.0, 0)
