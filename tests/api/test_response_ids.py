"""A chat completion's and a completion's id as vLLM makes it: named by the client's
X-Request-Id (else the body's `request_id`), while the id each request is queued under
stays unique (api/response_ids.py)."""

from __future__ import annotations

import httpx
import openai

from .conftest import MODEL
from .fakes import FakeWorker

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
COMPLETION = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
RANDOM_HEX = 32


def test_a_chat_is_named_by_the_clients_header_and_then_its_body(
    client: httpx.Client, worker: FakeWorker
) -> None:
    by_header = client.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "r-1"})
    by_body = client.post("/v1/chat/completions", json={**CHAT, "request_id": "r-2"})
    both = client.post(
        "/v1/chat/completions",
        json={**CHAT, "request_id": "body"},
        headers={"X-Request-Id": "header"},
    )
    unnamed = client.post("/v1/chat/completions", json=CHAT)
    unusable = client.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "a b"})
    ids = [a.json()["id"] for a in (by_header, by_body, both, unnamed, unusable)]
    assert ids[:3] == ["chatcmpl-r-1", "chatcmpl-r-2", "chatcmpl-header"]
    for generated in ids[3:]:
        assert generated.startswith("chatcmpl-") and len(generated) == 9 + RANDOM_HEX
    queued = worker.received
    assert [r.public_id for r in queued] == [*ids[:3], None, None]
    assert [r.id for r in queued][3:] == ids[3:]
    # Queued under ids of their own, whatever the client called them.
    assert len({r.id for r in queued}) == 5 and not {r.id for r in queued[:3]} & set(ids)


def test_a_stream_carries_the_name_and_two_requests_may_share_it(
    sdk: openai.OpenAI, worker: FakeWorker
) -> None:
    named = sdk.with_options(default_headers={"X-Request-Id": "rollout-3"})
    chunks = list(
        named.chat.completions.create(model=MODEL, messages=CHAT["messages"], stream=True)  # type: ignore[arg-type]
    )
    assert {chunk.id for chunk in chunks} == {"chatcmpl-rollout-3"}
    again = named.chat.completions.create(model=MODEL, messages=CHAT["messages"], max_tokens=2)  # type: ignore[arg-type]
    assert again.id == "chatcmpl-rollout-3" and again.choices[0].message.content
    first, second = worker.received
    assert first.id != second.id


def test_a_completion_is_named_as_vllm_names_it_and_its_prompts_share_the_name(
    client: httpx.Client, worker: FakeWorker
) -> None:
    named = client.post("/v1/completions", json=COMPLETION, headers={"X-Request-Id": "c-1"})
    assert named.json()["id"] == "cmpl-c-1"
    two = client.post("/v1/completions", json={**COMPLETION, "prompt": ["Hi", "Yo"]}).json()
    assert len(two["choices"]) == 2
    first, *pair = worker.received
    assert first.public_id == "cmpl-c-1" and first.id != "cmpl-c-1"
    # One name for both prompts: the response's id, which /abort_requests is given.
    assert [r.public_id for r in pair] == [two["id"], two["id"]]
    assert len({r.id for r in pair}) == 2


def test_a_body_request_id_out_of_bounds_is_refused(client: httpx.Client) -> None:
    """Held to the header's rule (printable ASCII, no spaces): it is echoed and logged."""
    for bad in ("", "x" * 201, "a b", "x\nINFO forged line", "\x1b[31mred"):
        response = client.post("/v1/chat/completions", json={**CHAT, "request_id": bad})
        assert response.status_code == 400


def test_a_message_is_named_by_its_msg_id(client: httpx.Client, worker: FakeWorker) -> None:
    body = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
    answer = client.post("/v1/messages", json=body)
    assert answer.status_code == 200, answer.text
    (queued,) = worker.received
    assert answer.json()["id"] == queued.public_id
    assert queued.public_id.startswith("msg_") and queued.id.startswith("chatcmpl-")
