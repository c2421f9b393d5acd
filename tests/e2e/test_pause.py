"""vLLM's /pause and /resume on the real `conveyor serve` tree, called with the OpenAI SDK:
a pause answers a running stream with what it has and finish_reason "abort" (or freezes
it, with mode keep, and /resume carries it on unchanged); a request sent while paused
waits and is answered after /resume."""

from __future__ import annotations

import threading
import time

import httpx
import openai

from .batch_calls import DONE, jsonl, submit, wait_until

MODEL = "smollm2"
MESSAGES = [{"role": "user", "content": "Tell me about the history of bridges."}]
MAX_TOKENS = 64


def is_paused(http: httpx.Client) -> bool:
    reply = http.get("/is_paused")
    assert reply.status_code == 200, reply.text
    return reply.json()["is_paused"]


def answer(sdk: openai.OpenAI) -> str:
    reply = sdk.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0
    )
    return reply.choices[0].message.content or ""


def whole_answer(sdk: openai.OpenAI) -> str:
    """The long answer the streams below give when nothing pauses them."""
    reply = sdk.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    return reply.choices[0].message.content or ""


def stream_with_a_pause(
    http: httpx.Client, sdk: openai.OpenAI, mode: str, resume_after: bool
) -> tuple[str, str | None, list[int]]:
    """Stream a long answer; once it runs, POST /pause?mode=... (then /resume, after
    counting the pieces 0.3 s and 1.3 s into the pause). The text streamed, the last
    finish_reason, and those two counts."""
    stream = sdk.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    pieces: list[str] = []
    finish: str | None = None
    calls: list[int] = []
    counts: list[int] = []

    def pause_then_resume() -> None:
        reply = http.post("/pause", params={"mode": mode})
        calls.append(reply.status_code)
        assert reply.json() == {"status": "paused"}
        if resume_after:
            for wait in (0.3, 1.0):  # what was published before the pause is read by then
                time.sleep(wait)
                counts.append(len(pieces))
            calls.append(http.post("/resume").status_code)

    caller = threading.Thread(target=pause_then_resume)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
        if len(pieces) == 3 and not calls and not caller.is_alive():
            caller.start()
    caller.join()
    assert calls == ([200, 200] if resume_after else [200])
    return "".join(pieces), finish, counts


def test_a_pause_answers_a_running_stream_and_holds_new_requests_until_resumed(
    dev_server: tuple[httpx.Client, openai.OpenAI],
) -> None:
    http, sdk = dev_server
    before, whole = answer(sdk), whole_answer(sdk)
    assert not is_paused(http)
    text, finish, _ = stream_with_a_pause(http, sdk, "abort", resume_after=False)
    assert finish == "abort"
    assert 0 < len(text) < len(whole) and whole.startswith(text)
    assert is_paused(http)
    held: list[str] = []
    waiter = threading.Thread(target=lambda: held.append(answer(sdk)))
    waiter.start()
    waiter.join(2.0)
    assert waiter.is_alive() and not held  # it waits, neither refused nor run
    reply = http.post("/resume")
    assert reply.status_code == 200 and reply.json() == {"status": "resumed"}
    waiter.join(60)
    assert held == [before]
    assert not is_paused(http)


def test_mode_keep_freezes_a_stream_and_resume_carries_it_on_unchanged(
    dev_server: tuple[httpx.Client, openai.OpenAI],
) -> None:
    http, sdk = dev_server
    text, finish, counts = stream_with_a_pause(http, sdk, "keep", resume_after=True)
    assert counts[0] == counts[1] < MAX_TOKENS  # frozen while paused
    assert finish == "length"
    assert text == whole_answer(sdk)
    assert not is_paused(http)


def test_bad_arguments_are_400s_and_unknown_models_404s(
    dev_server: tuple[httpx.Client, openai.OpenAI],
) -> None:
    http, _ = dev_server
    bad = http.post("/pause", params={"mode": "freeze"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "mode"
    assert http.post("/pause", params={"model": "nope"}).status_code == 404
    assert not is_paused(http)


def test_a_batch_running_through_a_pause_completes_every_line_whole(
    dev_server: tuple[httpx.Client, openai.OpenAI],
) -> None:
    """Batch lines a pause ends are sent again by the batch worker and run whole after
    /resume: no line is recorded cut short or failed."""
    http, sdk = dev_server
    lines = [
        {
            "custom_id": f"p{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"Count to {i}."}],
                "max_tokens": 24,
                "temperature": 0,
                "ignore_eos": True,
            },
        }
        for i in range(40)
    ]
    batch = submit(sdk, lines)
    wait_until(sdk, batch.id, lambda b: b.request_counts.completed >= 4)
    assert http.post("/pause").status_code == 200  # mode abort: running lines end now
    time.sleep(2.0)
    paused_at = sdk.batches.retrieve(batch.id).request_counts.completed
    time.sleep(1.0)
    assert sdk.batches.retrieve(batch.id).request_counts.completed == paused_at  # nothing runs
    assert http.post("/resume").status_code == 200
    batch = wait_until(sdk, batch.id, lambda b: b.status in DONE)
    assert batch.status == "completed", batch
    assert (batch.request_counts.completed, batch.request_counts.failed) == (40, 0)
    output = jsonl(sdk, batch.output_file_id)
    assert sorted(o["custom_id"] for o in output) == sorted(line["custom_id"] for line in lines)
    for line in output:
        choice = line["response"]["body"]["choices"][0]
        assert choice["finish_reason"] == "length", line  # whole: 24 tokens, never "abort"
