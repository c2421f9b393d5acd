"""vLLM's POST /abort_requests on the real `conveyor serve` tree, called with the OpenAI
SDK: a stream named by its X-Request-Id ends with what it has and finish_reason "abort"
while another request runs on; without ids every request in flight ends so, and the same
name sent again afterwards runs whole."""

from __future__ import annotations

import threading
import time

import httpx
import openai

MODEL = "smollm2"
MESSAGES = [{"role": "user", "content": "Tell me about the history of bridges."}]
MAX_TOKENS = 64


def long_answer(sdk: openai.OpenAI) -> openai.types.chat.ChatCompletion:
    return sdk.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=MAX_TOKENS,
        temperature=0,
        extra_body={"ignore_eos": True},
    )


def abort(http: httpx.Client, *ids: str) -> dict[str, object]:
    reply = http.post("/abort_requests", json={"request_ids": list(ids)} if ids else {})
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_a_named_stream_ends_with_what_it_has_and_another_request_runs_on(
    dev_server: tuple[httpx.Client, openai.OpenAI],
) -> None:
    http, sdk = dev_server
    whole = long_answer(sdk).choices[0].message.content or ""
    other: list[str] = []
    bystander = threading.Thread(
        target=lambda: other.append(long_answer(sdk).choices[0].message.content or "")
    )
    named = sdk.with_options(default_headers={"X-Request-Id": "rollout-1"})
    stream = named.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    pieces: list[str] = []
    finish = None
    for chunk in stream:
        assert chunk.id == "chatcmpl-rollout-1"
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
        if len(pieces) == 3 and not bystander.is_alive() and not other:
            bystander.start()
            time.sleep(0.5)  # the bystander runs too
            assert abort(http, "chatcmpl-rollout-1") == {"status": "aborted", "aborted": 1}
    text = "".join(pieces)
    assert finish == "abort"
    assert 0 < len(text) < len(whole) and whole.startswith(text)
    bystander.join(60)
    assert other == [whole]  # not named: ran to its end, unchanged


def test_without_ids_every_request_ends_and_the_name_sent_again_runs_whole(
    dev_server: tuple[httpx.Client, openai.OpenAI],
) -> None:
    http, sdk = dev_server
    whole = long_answer(sdk).choices[0].message.content or ""
    named = sdk.with_options(default_headers={"X-Request-Id": "rollout-2"})
    answers: list[openai.types.chat.ChatCompletion] = []
    waiters = [threading.Thread(target=lambda: answers.append(long_answer(named))) for _ in "ab"]
    for waiter in waiters:
        waiter.start()
    time.sleep(1.5)  # both running (a whole answer takes several seconds here)
    assert abort(http)["aborted"] == 2
    for waiter in waiters:
        waiter.join(60)
    assert len(answers) == 2
    for cut in answers:
        assert cut.id == "chatcmpl-rollout-2"
        assert cut.choices[0].finish_reason == "abort"
        text = cut.choices[0].message.content or ""
        assert len(text) < len(whole) and whole.startswith(text)
        assert cut.usage is not None and cut.usage.completion_tokens < MAX_TOKENS
    again = long_answer(named)
    assert again.choices[0].finish_reason == "length"
    assert again.choices[0].message.content == whole
