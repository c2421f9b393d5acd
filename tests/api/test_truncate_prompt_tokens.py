"""vLLM's `truncate_prompt_tokens` on chat and completions: the prompt's last k tokens
go to the engine (-1: the model's length), so a prompt longer than the context is cut,
not refused; a value vLLM would refuse is a 400."""

from __future__ import annotations

import httpx
import pytest

from .conftest import MODEL
from .fakes import FakeWorker

LONG = " ".join(f"word{i}" for i in range(400))  # longer than the fake model's 256


def post(client: httpx.Client, path: str, **body: object) -> httpx.Response:
    return client.post(path, json={"model": MODEL, "max_tokens": 2, **body})


def test_a_text_prompt_keeps_its_last_tokens(client: httpx.Client, worker: FakeWorker) -> None:
    prompt = "one two three four five six seven eight nine ten"
    response = post(client, "/v1/completions", prompt=prompt, truncate_prompt_tokens=3)
    assert response.status_code == 200, response.text
    full = worker.tokenizer.encode(prompt)
    assert len(full) > 3
    assert worker.received[-1].prompt_token_ids == full[-3:]
    assert response.json()["usage"]["prompt_tokens"] == 3


def test_token_prompts_and_echo_keep_the_same_end(client: httpx.Client, worker: FakeWorker) -> None:
    text = "alpha beta gamma delta epsilon"
    ids = worker.tokenizer.encode(text)
    kept = worker.tokenizer.decode(ids[-2:])
    for prompt in (ids, text):
        response = post(
            client, "/v1/completions", prompt=prompt, truncate_prompt_tokens=2, echo=True
        )
        assert response.status_code == 200, response.text
        assert worker.received[-1].prompt_token_ids == ids[-2:]
        assert response.json()["choices"][0]["text"].startswith(kept)


def test_a_prompt_longer_than_the_context_is_cut_not_refused(
    client: httpx.Client, worker: FakeWorker
) -> None:
    assert post(client, "/v1/completions", prompt=LONG).status_code == 400
    response = post(client, "/v1/completions", prompt=LONG, truncate_prompt_tokens=100)
    assert response.status_code == 200, response.text
    assert len(worker.received[-1].prompt_token_ids) == 100
    chat = [{"role": "user", "content": LONG}]
    assert post(client, "/v1/chat/completions", messages=chat).status_code == 400
    response = post(client, "/v1/chat/completions", messages=chat, truncate_prompt_tokens=50)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == 50
    assert len(worker.received[-1].prompt_token_ids) == 50


def test_minus_one_keeps_the_models_length(client: httpx.Client, worker: FakeWorker) -> None:
    response = post(
        client, "/v1/completions", prompt=LONG, truncate_prompt_tokens=-1, max_tokens=None
    )
    # The whole context is prompt: no room is left for the completion.
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    chat = [{"role": "user", "content": "hi"}]
    response = post(client, "/v1/chat/completions", messages=chat, truncate_prompt_tokens=-1)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("value", [0, -2, "x", 10_000])
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_values_vllm_refuses_are_a_400(client: httpx.Client, path: str, value: object) -> None:
    field = (
        {"prompt": "hi"}
        if path == "/v1/completions"
        else {"messages": [{"role": "user", "content": "hi"}]}
    )
    response = post(client, path, truncate_prompt_tokens=value, **field)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "truncate_prompt_tokens"
