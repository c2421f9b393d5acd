"""/v1/models (what live workers announce) and vLLM's /tokenize + /detokenize."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from .conftest import MAX_MODEL_LEN, MODEL, Stack
from .fakes import FakeWorker


def test_models_list_and_retrieve(client: httpx.Client) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    (card,) = body["data"]
    assert card["id"] == MODEL
    assert card["object"] == "model"
    assert card["owned_by"] == "conveyor"
    assert card["max_model_len"] == MAX_MODEL_LEN
    assert isinstance(card["created"], int)
    (permission,) = card["permission"]  # vLLM's entry, which older clients read
    assert permission["object"] == "model_permission" and permission["allow_sampling"]
    assert permission["id"].startswith("modelperm-")
    assert client.get(f"/v1/models/{MODEL}").json() == card


def test_tokenize_prompt(client: httpx.Client, worker: FakeWorker) -> None:
    response = client.post(
        "/tokenize", json={"model": MODEL, "prompt": "Hello world", "return_token_strs": True}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    expected = worker.tokenizer.encode("Hello world")
    assert body["tokens"] == expected
    assert body["count"] == len(expected)
    assert body["max_model_len"] == MAX_MODEL_LEN
    assert body["token_strs"] == worker.tokenizer.convert_ids_to_tokens(expected)


def test_tokenize_refuses_a_lone_surrogate_as_every_route_does(client: httpx.Client) -> None:
    """json.loads let "\\ud800" through to the tokenizer: a 500."""
    for body in (
        b'{"model": "%s", "prompt": "\\ud800"}' % MODEL.encode(),
        b'{"model": "%s", "messages": [{"role": "user", "content": "\\ud800"}]}' % MODEL.encode(),
    ):
        response = client.post(
            "/tokenize", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, response.text
        assert "not valid JSON" in response.json()["error"]["message"]


def test_tokenize_messages_uses_the_chat_template(client: httpx.Client, worker: FakeWorker) -> None:
    messages = [{"role": "user", "content": "Hi!"}]
    body = client.post("/tokenize", json={"messages": messages}).json()  # one model: no name
    assert body["tokens"] == worker.tokenizer.apply_chat_template(messages)
    assert body["token_strs"] is None
    # A per-request template is refused, as chat refuses it, not counted with another one.
    asked = client.post("/tokenize", json={"messages": messages, "chat_template": "{{ 'X' }}"})
    assert asked.status_code == 400, asked.text
    assert asked.json()["error"]["param"] == "chat_template"


def test_tokenize_counts_messages_as_the_chat_request_renders_them(
    client: httpx.Client, worker: FakeWorker
) -> None:
    """A null content and a turn of only tool calls render (as ""), as chat renders them."""
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": None},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]
    counted = client.post("/tokenize", json={"messages": messages})
    assert counted.status_code == 200, counted.text
    answer = client.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": messages, "max_tokens": 1}
    )
    assert answer.status_code == 200, answer.text
    assert counted.json()["tokens"] == worker.received[-1].prompt_token_ids


def test_detokenize_round_trip(client: httpx.Client, worker: FakeWorker) -> None:
    ids = worker.tokenizer.encode("Hello world")
    response = client.post("/detokenize", json={"model": MODEL, "tokens": ids})
    assert response.status_code == 200
    assert response.json() == {"prompt": "Hello world"}
    bad = client.post("/detokenize", json={"model": MODEL, "tokens": [10**8]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    assert client.post("/tokenize", json={"model": "nope", "prompt": "x"}).status_code == 404
    assert client.post("/tokenize", json={"model": MODEL}).status_code == 400


def test_tokenizer_info_is_served_only_when_asked(make_stack: Callable[..., Stack]) -> None:
    """vLLM's --enable-tokenizer-info-endpoint: the published tokenizer_config.json with
    the chat template the API renders with (--chat-template's, when given); a 404
    without the flag, since it shows the template."""
    template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}"
    stack = make_stack(enable_tokenizer_info_endpoint=True, chat_template=template)
    with stack.client() as http:
        info = http.get("/tokenizer_info").json()
        assert info == http.get("/tokenizer_info", params={"model": MODEL}).json()
        assert http.get("/tokenizer_info", params={"model": "nope"}).status_code == 404
    assert info["chat_template"] == template
    assert info["tokenizer_class"] and info["eos_token"] == "<|im_end|>"
    with make_stack().client() as http:
        assert http.get("/tokenizer_info").status_code == 404
