"""Lost messages, re-delivered requests and departed clients: never a hang, never doubled text."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import httpx
import redis

from .conftest import MODEL, Stack
from .fakes import FakeWorker, wait_for
from .test_chat import sse_events

MESSAGES = [{"role": "user", "content": "Count."}]


def stream_events(client: httpx.Client, body: dict) -> list[str]:
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        return sse_events(response)


def test_seq_gap_non_stream_recovers_from_result(client: httpx.Client, worker: FakeWorker) -> None:
    worker.behaviour = "gap"
    response = client.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES, "max_tokens": 4}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == " one two three four"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 4


def test_seq_gap_stream_ends_with_error(client: httpx.Client, worker: FakeWorker) -> None:
    worker.behaviour = "gap"
    events = stream_events(client, {"model": MODEL, "messages": MESSAGES, "max_tokens": 4})
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "reply_lost"
    text = "".join(
        c["choices"][0]["delta"].get("content", "")
        for c in map(json.loads, events[:-2])
        if c["choices"]
    )
    assert text == " one"  # what arrived before the gap, nothing after it


def test_restart_non_stream_starts_over(client: httpx.Client, worker: FakeWorker) -> None:
    worker.behaviour = "restart"
    response = client.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES, "max_tokens": 4}
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == " one two three four"
    assert response.json()["usage"]["completion_tokens"] == 4


def test_restart_stream_after_tokens_is_an_error(client: httpx.Client, worker: FakeWorker) -> None:
    worker.behaviour = "restart"
    events = stream_events(client, {"model": MODEL, "messages": MESSAGES, "max_tokens": 4})
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "worker_restarted"
    assert "restarted on another worker" in error["message"]
    text = "".join(
        c["choices"][0]["delta"].get("content", "")
        for c in map(json.loads, events[:-2])
        if c["choices"]
    )
    assert text == " one two"  # never repeated


def test_stream_disconnect_publishes_abort(stack: Stack, worker: FakeWorker) -> None:
    worker.behaviour = "slow"
    body = {"model": MODEL, "prompt": "Story:", "max_tokens": 200, "stream": True}
    with (
        httpx.Client(base_url=stack.url, timeout=10) as http,
        http.stream("POST", "/v1/completions", json=body) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        request_id = json.loads(first[len("data: ") :])["id"]
    # leaving the block closed the connection mid-stream
    wait_for(lambda: request_id in worker.aborted)


def test_an_abandoned_request_leaves_the_queue_even_if_its_worker_missed_the_abort(
    stack: Stack, worker: FakeWorker
) -> None:
    """Aborts are pub/sub: a worker that is hung or dead misses them. The request's stream
    entry goes too, so a janitor reclaiming the dead worker's entries has nothing to rerun."""
    worker.behaviour = "stalled"
    body = {"model": MODEL, "prompt": "Story:", "max_tokens": 50, "stream": True}
    with (
        httpx.Client(base_url=stack.url, timeout=10) as http,
        http.stream("POST", "/v1/completions", json=body) as response,
    ):
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        request_id = json.loads(first[len("data: ") :])["id"]
    stream, entry_id = worker.entries[request_id]
    with redis.Redis.from_url(worker.redis_url) as client:
        wait_for(lambda: not client.xrange(stream, entry_id, entry_id))


def test_non_stream_disconnect_publishes_abort(stack: Stack, worker: FakeWorker) -> None:
    worker.behaviour = "slow"

    def call() -> None:
        body = {"model": MODEL, "prompt": "Story:", "max_tokens": 200}
        try:
            response = httpx.post(f"{stack.url}/v1/completions", json=body, timeout=0.5)
            raise AssertionError(f"expected a client timeout, got {response.status_code}")
        except httpx.TimeoutException:
            pass  # the client gives up and closes the connection

    thread = threading.Thread(target=call)
    thread.start()
    request = wait_for(lambda: worker.received and worker.received[-1])
    thread.join()
    wait_for(lambda: request.id in worker.aborted)


def test_a_request_whose_models_workers_are_gone_ends_with_no_worker(
    make_stack: Callable[..., Stack],
) -> None:
    """The model's only worker dies with the request queued: once no worker has served the
    model for --worker-loss-timeout the client gets a 503 no_worker (not a wait for
    --request-timeout), and the request leaves the queue, so a worker started later does
    not generate for a client that has gone."""
    stack = make_stack(worker_loss_timeout=1.0, request_timeout=120.0)
    stack.worker.behaviour = "paused"  # beats, reads nothing: the request stays queued
    wait_for(stack.worker.paused.is_set)
    answers: list[httpx.Response] = []

    def call() -> None:
        with stack.client(timeout=120) as http:
            body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4}
            answers.append(http.post("/v1/chat/completions", json=body))

    stream = stack.names.requests(MODEL)
    with redis.Redis.from_url(stack.redis_url) as client:
        thread = threading.Thread(target=call)
        thread.start()
        wait_for(lambda: client.xlen(stream) == 1)
        heartbeat = stack.names.worker(MODEL, stack.worker.instance)
        beat = client.get(heartbeat)
        stopped = time.monotonic()
        stack.worker.stop()  # a clean stop deletes its heartbeat...
        client.set(heartbeat, beat, ex=3)  # ...a crashed worker's expires 3 s on
        thread.join(60)
        took = time.monotonic() - stopped
        assert answers, "no answer within 60 s"
        response = answers[0]
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "no_worker"
        assert response.headers["retry-after"] == "5"
        assert took < 30  # heartbeat TTL + catalog refresh + two silence checks + timeout
        wait_for(lambda: client.xlen(stream) == 0)
