"""The engine worker driven over a real Redis exactly as an API process drives it."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from typing import Any

import pytest
import redis

from conveyor import metrics as m
from conveyor.beat_file import beat_file
from conveyor.bus import KNOWN_NAME_TTL_SECONDS, BusNames
from conveyor.bus import TOKENIZER_DIGEST_FIELD as DIGEST_FIELD
from conveyor.metrics import render_worker_metrics
from conveyor.protocol import ReplyMessage
from conveyor.settings import Settings
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from workers.announce import ensure_group
from workers.engine_worker import run_worker
from workers.intake import REQUEST_FIELD

from .conftest import Harness, wait_for

PROMPT = "The capital of France is"


def reference(engine: LLMEngine, prompt: list[int], **sampling: Any) -> tuple[str, list[int]]:
    """Greedy output of the engine itself, run before any worker holds it."""
    engine.add_request("ref", prompt, SamplingParams(**sampling))
    text, tokens = "", []
    while engine.has_unfinished():
        for out in engine.step():
            for choice in out.outputs:
                text += choice.text
                tokens += choice.token_ids
    return text, tokens


def admitted_ids(engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the requests that reach engine.add_request, in order, from now on."""
    admitted: list[str] = []
    real_add = engine.add_request

    def spy(request_id: str, *args: Any, **kwargs: Any) -> None:
        admitted.append(request_id)
        real_add(request_id, *args, **kwargs)

    monkeypatch.setattr(engine, "add_request", spy)
    return admitted


def joined(messages: list[ReplyMessage]) -> tuple[str, list[int]]:
    text = "".join(c.text for m in messages for c in m.choices)
    return text, [t for m in messages for c in m.choices for t in c.token_ids]


def test_stream_matches_engine_then_result_ack_heartbeat_and_metrics(
    engine: LLMEngine, make_worker: Any, client: redis.Redis
) -> None:
    prompt = engine.tokenizer.encode(PROMPT)
    want_text, want_tokens = reference(engine, prompt, temperature=0.0, max_tokens=6)
    h: Harness = make_worker()
    names, instance = h.names, h.worker.instance

    # Announced: tokenizer files with a digest, the model known, the heartbeat live.
    tok = client.hgetall(names.tokenizer(h.model))
    assert {"tokenizer.json", "tokenizer_config.json", "config.json", DIGEST_FIELD} <= set(tok)
    assert len(tok[DIGEST_FIELD]) == 64
    config = json.loads(tok["config.json"])
    assert config == {
        "eos_token_id": sorted(engine.eos_token_ids),
        "max_model_len": 1024,
        # What the API checks an embedding request's `dimensions` against.
        "hidden_size": engine.model_config.hidden_size,
        "is_matryoshka": False,
        "matryoshka_dimensions": [],
        # Whether the API reads its output as harmony messages (gpt-oss's).
        "harmony": False,
        # The most logprobs the API lets a request ask for (--max-logprobs).
        "max_logprobs": 20,
        # A classifier's label names (/classify); none for this text model.
        "labels": [],
        # Whether /score joins a pair's texts for it (classifier_from_token models).
        "concat_pairs": False,
        # An encoder's token types (BERT's 2: /score marks a pair's second text); none.
        "type_vocab_size": 0,
    }
    # The sampling defaults served: this model's folder has no generation_config.json.
    assert json.loads(tok["generation_config.json"]) == {}
    assert client.get(names.known_model(h.model)) == "1"
    beat = json.loads(client.get(names.worker(h.model, instance)))
    assert beat["capacity"] == 2 and beat["instance"] == instance and beat["max_model_len"] == 1024
    assert 0 < client.pttl(names.worker(h.model, instance)) <= 2000

    streamed = h.request(prompt, logprobs=2)
    quiet = h.request(prompt, stream=False)
    replies = h.collect([h.send(streamed), h.send(quiet)])

    msgs = replies[streamed.id]
    assert [m.seq for m in msgs] == list(range(len(msgs)))
    assert joined(msgs) == (want_text, want_tokens)
    assert all(m.worker == instance and m.attempt == 1 for m in msgs)
    assert [m.finished for m in msgs] == [False] * (len(msgs) - 1) + [True]
    final = msgs[-1]
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (len(prompt), 6)
    assert final.choices[-1].finish_reason == "length"
    assert final.times is not None and final.times["finished"] is not None
    # The prefix cache's share comes with the first token, so a stream the client leaves
    # early still knows it; later messages leave it out.
    assert msgs[0].cached_tokens == final.usage.cached_tokens
    assert all(m.cached_tokens is None for m in msgs[1:])
    logprobs = [lp for m in msgs for c in m.choices for lp in c.logprobs or []]
    assert [lp.token_id for lp in logprobs] == want_tokens
    assert all(len(lp.top) == 2 for lp in logprobs)

    # The stored result is the whole answer; the stream entry is acked and removed.
    stored = ReplyMessage.decode(client.get(names.result(streamed.id)))
    assert stored.finished and stored.seq == final.seq and stored.usage == final.usage
    assert (stored.choices[0].text, stored.choices[0].token_ids) == (want_text, want_tokens)
    assert len(stored.choices[0].logprobs or []) == 6
    assert 0 < client.pttl(names.result(streamed.id)) <= 60_000
    assert h.pending() == 0 and client.xlen(h.stream) == 0

    # Not streaming: a start message naming the worker (no text), then the whole result.
    started, whole = replies[quiet.id]
    assert (started.seq, started.finished, started.choices) == (0, False, [])
    assert started.worker == instance and started.times is not None
    assert started.cached_tokens is not None
    assert whole.seq == 1 and whole.finished and joined([whole]) == (want_text, want_tokens)
    assert ReplyMessage.decode(client.get(names.result(quiet.id))).seq == 1

    # Metrics reach Redis with the heartbeat and render under vLLM's names.
    def snapshot() -> dict[str, Any]:
        return json.loads(client.get(names.worker_metrics(instance)) or "{}")

    wait_for(lambda: snapshot().get("counters", {}).get("vllm:generation_tokens_total") == 12)
    text = render_worker_metrics([snapshot()]).decode()
    labels = f'model_name="{h.model}",worker="{instance}"'
    assert f"vllm:prompt_tokens_total{{{labels}}} {2.0 * len(prompt)}" in text
    assert f'vllm:request_success_total{{finished_reason="length",{labels}}} 2.0' in text
    assert f"vllm:time_to_first_token_seconds_count{{{labels}}} 2.0" in text
    assert f"vllm:e2e_request_latency_seconds_count{{{labels}}} 2.0" in text
    assert f"vllm:request_queue_time_seconds_count{{{labels}}} 2.0" in text
    assert f"vllm:inter_token_latency_seconds_count{{{labels}}} 10.0" in text
    assert f"vllm:time_per_output_token_seconds_count{{{labels}}} 10.0" in text  # old name
    assert f"vllm:request_max_num_generation_tokens_sum{{{labels}}} 12.0" in text
    # Per request: its phases, its sizes and its parameters, as vLLM's dashboards read.
    for phase in ("prefill", "decode", "inference"):
        assert f"vllm:request_{phase}_time_seconds_count{{{labels}}} 2.0" in text
    assert f"vllm:request_prompt_tokens_sum{{{labels}}} {2.0 * len(prompt)}" in text
    assert f"vllm:request_generation_tokens_sum{{{labels}}} 12.0" in text
    assert f'vllm:request_generation_tokens_bucket{{le="5.0",{labels}}} 0.0' in text
    assert f'vllm:request_generation_tokens_bucket{{le="10.0",{labels}}} 2.0' in text
    assert f'vllm:request_params_n_bucket{{le="1.0",{labels}}} 2.0' in text
    assert f"vllm:request_params_max_tokens_sum{{{labels}}} 12.0" in text
    counters = snapshot()["counters"]
    assert counters["vllm:prefix_cache_queries_total"] == 2 * len(prompt)
    assert 0 <= counters["vllm:prefix_cache_hits_total"] <= len(prompt)
    # Every step's computed tokens: both prompts (less what the prefix cache held) and
    # the 5 decodes after each first token.
    steps = snapshot()["histograms"]["vllm:iteration_tokens_total"]
    hits = counters["vllm:prefix_cache_hits_total"]
    assert steps["sum"] == 2 * len(prompt) - hits + 2 * 5
    assert 2 <= sum(steps["counts"]) <= 12
    assert f"vllm:iteration_tokens_total_count{{{labels}}}" in text
    # The cache's configuration, as vLLM's info gauge: its block count and dtype.
    info = snapshot()["cache_info"]
    assert info["num_gpu_blocks"] == str(h.worker.engine.num_kv_blocks)
    assert info["cache_dtype"] == "auto" and info["block_size"] == "16"
    assert 'vllm:cache_config_info{block_size="16",cache_dtype="auto",' in text

    h.shutdown()
    assert h.exit_code == 0
    assert not client.exists(names.worker(h.model, instance))
    assert client.exists(names.worker_metrics(instance))


def test_abort_frees_the_request(engine: LLMEngine, make_worker: Any, client: redis.Redis) -> None:
    h: Harness = make_worker()
    request = h.request(engine.tokenizer.encode(PROMPT), max_tokens=500, ignore_eos=True)
    h.send(request)
    wait_for(lambda: h.poll(0.05) or request.id in h.messages)
    client.publish(h.names.abort, request.id)
    wait_for(lambda: engine.num_requests == 0, timeout=2.0)
    wait_for(lambda: h.pending() == 0, timeout=2.0)
    assert not h.finished(request.id)
    assert not client.exists(h.names.result(request.id))
    wait_for(lambda: h.worker.metrics.snapshot()["request_success"]["abort"] == 1)


def test_a_request_whose_api_is_gone_stops_at_its_deadline(
    engine: LLMEngine, make_worker: Any, client: redis.Redis
) -> None:
    """No abort ever comes (its API was killed): the worker ends it at the deadline itself."""
    h: Harness = make_worker()
    request = h.request(
        engine.tokenizer.encode(PROMPT),
        deadline=time.time() + 1.5,
        max_tokens=100_000,
        ignore_eos=True,
    )
    h.send(request)
    (*tokens, last) = h.collect([request.id], timeout=15.0)[request.id]
    assert any(m.choices for m in tokens)  # it was generating when the deadline passed
    assert last.error is not None
    assert (last.error.status, last.error.code) == (504, "timeout")
    assert "past its deadline" in last.error.message
    wait_for(lambda: engine.num_requests == 0, timeout=2.0)
    wait_for(lambda: h.pending() == 0, timeout=2.0)


def test_invalid_and_expired_requests_get_errors_and_are_acked(
    engine: LLMEngine, make_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    admitted = admitted_ids(engine, monkeypatch)
    h: Harness = make_worker()
    prompt = engine.tokenizer.encode(PROMPT)
    negative = h.request(prompt, temperature=-1.0)
    long = h.request([1] * 1100)
    unknown = h.request(prompt, temprature=0.5)
    expired = h.request(prompt, deadline=time.time() - 5)
    replies = h.collect([h.send(r) for r in (negative, long, unknown, expired)])

    def error(request_id: str) -> Any:
        (message,) = replies[request_id]
        assert message.finished and message.error is not None
        return message.error

    assert (error(negative.id).status, error(negative.id).param) == (400, "temperature")
    assert error(negative.id).type == "invalid_request_error"
    assert (error(long.id).status, error(long.id).param) == (400, "prompt")
    assert "1024" in error(long.id).message
    assert (error(unknown.id).status, error(unknown.id).param) == (400, "temprature")
    assert (error(expired.id).status, error(expired.id).type) == (503, "timeout")
    assert "expired in the queue" in error(expired.id).message
    assert expired.id not in admitted and negative.id not in admitted
    assert h.pending() == 0


def test_back_pressure_holds_at_most_capacity(engine: LLMEngine, make_worker: Any) -> None:
    h: Harness = make_worker()
    prompt = engine.tokenizer.encode(PROMPT)
    ids = [h.send(h.request(prompt, max_tokens=4)) for _ in range(5)]
    most = 0
    deadline = time.monotonic() + 30
    while not all(h.finished(i) for i in ids):
        assert time.monotonic() < deadline
        most = max(most, h.pending(h.worker.instance))
        h.poll(0.01)
    assert most == 2  # never more than max_num_seqs, and it did fill up
    assert all(joined(h.messages[i])[1] == joined(h.messages[ids[0]])[1] for i in ids)
    assert h.pending() == 0


def _strand(h: Harness, client: redis.Redis, consumer: str, request: Any) -> None:
    """A worker named `consumer` took the request and died without acking it."""
    ensure_group(client, h.stream)
    h.send(request)
    got = client.xreadgroup("workers", consumer, {h.stream: ">"}, count=1)
    assert got and got[0][1][0][1][REQUEST_FIELD] == request.encode()


@pytest.mark.parametrize("consumer", ["dead", "self"])
def test_janitor_reclaims_a_dead_consumers_request(
    engine: LLMEngine, make_worker: Any, client: redis.Redis, consumer: str
) -> None:
    """'self': a restarted worker with the same instance name also reruns its old messages."""
    h: Harness = make_worker(start=False)
    name = h.worker.instance if consumer == "self" else consumer
    prompt = engine.tokenizer.encode(PROMPT)
    want = reference(engine, prompt, temperature=0.0, max_tokens=6)
    request = h.request(prompt)
    _strand(h, client, name, request)
    h.start()
    msgs = h.collect([request.id])[request.id]
    assert all(m.attempt == 2 for m in msgs)
    assert joined(msgs) == want
    assert h.pending() == 0
    if consumer == "dead":  # housekeeping: the dead consumer leaves the group
        consumers = lambda: {c["name"] for c in client.xinfo_consumers(h.stream, "workers")}  # noqa: E731
        wait_for(lambda: "dead" not in consumers())


def test_janitor_does_not_rerun_a_request_its_api_deleted(
    engine: LLMEngine, make_worker: Any, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API deletes an abandoned request's entry (its dead worker missed the abort):
    the janitor clears it from the dead consumer's pending list without running it."""
    admitted = admitted_ids(engine, monkeypatch)
    h: Harness = make_worker(start=False)
    request = h.request(engine.tokenizer.encode(PROMPT))
    _strand(h, client, "dead", request)
    ((entry_id, _),) = client.xrange(h.stream)
    client.xdel(h.stream, entry_id)
    h.start()
    wait_for(lambda: h.pending() == 0)
    for _ in range(5):  # a few more sweeps; any reply would be read here
        h.poll(0.1)
    assert request.id not in admitted
    assert request.id not in h.messages


def test_too_many_deliveries_go_to_dead_letters(
    engine: LLMEngine, make_worker: Any, client: redis.Redis
) -> None:
    h: Harness = make_worker(start=False, max_deliveries=1)
    request = h.request(engine.tokenizer.encode(PROMPT))
    _strand(h, client, "dead", request)
    h.start()
    (message,) = h.collect([request.id])[request.id]
    assert message.error is not None and message.attempt == 2
    assert (message.error.status, message.error.type) == (500, "server_error")
    assert message.error.code == "worker_failed"
    assert "failed on 1 worker" in message.error.message
    (entry,) = client.xrange(h.names.dead_letters(h.model))
    assert entry[1][REQUEST_FIELD] == request.encode()
    assert "delivered 2 times" in entry[1]["reason"]
    assert h.pending() == 0


def test_failed_step_fails_requests_and_worker_keeps_serving(
    engine: LLMEngine, make_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_step = engine.step
    calls = {"n": 0}

    def flaky() -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated kernel failure")
        return real_step()

    monkeypatch.setattr(engine, "step", flaky)
    h: Harness = make_worker()
    prompt = engine.tokenizer.encode(PROMPT)
    first = h.request(prompt)
    msgs = h.collect([h.send(first)])[first.id]
    assert msgs[-1].error is not None and msgs[-1].error.status == 500
    assert [m.seq for m in msgs] == list(range(len(msgs)))
    second = h.request(prompt)
    msgs = h.collect([h.send(second)])[second.id]
    assert msgs[-1].error is None and msgs[-1].usage is not None
    assert h.pending() == 0


def test_a_request_counts_as_running_during_its_first_step(
    engine: LLMEngine, make_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long prompt's prefill is one step of seconds: while it runs, the gauges show the
    request running (vLLM counts it once scheduled), not still waiting."""
    real_execute = engine.runner.execute
    inside, release = threading.Event(), threading.Event()

    def held(*args: Any, **kwargs: Any) -> Any:
        if not inside.is_set():
            inside.set()
            release.wait(10)
        return real_execute(*args, **kwargs)

    monkeypatch.setattr(engine.runner, "execute", held)
    h: Harness = make_worker()
    request = h.request(engine.tokenizer.encode(PROMPT))
    h.send(request)
    try:
        assert inside.wait(10)
        during = h.worker.metrics.engine_state()[:2]
    finally:
        release.set()
    messages = h.collect([request.id])[request.id]
    assert messages[-1].error is None
    assert during == (1, 0)
    wait_for(lambda: h.worker.metrics.engine_state()[:2] == (0, 0))


def test_stop_drains_in_flight_requests(engine: LLMEngine, make_worker: Any) -> None:
    h: Harness = make_worker()
    request = h.request(engine.tokenizer.encode(PROMPT), max_tokens=12, ignore_eos=True)
    h.send(request)
    wait_for(lambda: h.poll(0.05) or request.id in h.messages)
    h.stop.set()
    h.collect([request.id])
    assert h.messages[request.id][-1].usage is not None
    h.shutdown()
    assert h.exit_code == 0 and h.pending() == 0


def test_a_draining_worker_says_so_at_once_in_its_heartbeat(
    engine: LLMEngine, make_worker: Any, client: redis.Redis
) -> None:
    """So API processes stop queueing requests for it (503 when it was the last)."""
    h: Harness = make_worker()
    h.worker.drain_timeout = 1.0
    key = h.worker.heartbeat.key
    request = h.request(engine.tokenizer.encode(PROMPT), max_tokens=100_000, ignore_eos=True)
    h.send(request)
    wait_for(lambda: h.poll(0.05) or len(h.messages.get(request.id, [])) > 1)
    assert json.loads(client.get(key))["draining"] is False
    h.stop.set()
    # Before the drain's end (its request still running), not at the next beat.
    wait_for(lambda: json.loads(client.get(key) or "{}").get("draining") is True, timeout=0.5)
    assert not h.finished(request.id)
    h.collect([request.id])
    h.shutdown()
    assert not client.exists(key)


def test_drain_timeout_releases_what_is_left_and_fails_streams_already_read(
    engine: LLMEngine, make_worker: Any
) -> None:
    """A request that can still start over elsewhere stays pending for another worker; a
    stream whose client read tokens gets its error now instead of ~20 s later."""
    h: Harness = make_worker()
    h.worker.drain_timeout = 0.3
    prompt = engine.tokenizer.encode(PROMPT)
    streamed = h.request(prompt, max_tokens=100_000, ignore_eos=True)
    whole = h.request(prompt, stream=False, max_tokens=100_000, ignore_eos=True)
    h.send(streamed)
    h.send(whole)
    wait_for(lambda: h.poll(0.05) or len(h.messages.get(streamed.id, [])) > 1)
    h.stop.set()
    last = h.collect([streamed.id])[streamed.id][-1]
    assert last.error is not None
    assert (last.error.status, last.error.code) == (503, "worker_stopped")
    h.shutdown()
    assert h.exit_code == 0
    assert not h.finished(whole.id)
    assert h.pending() == 1  # `whole`, for the next worker's janitor


def test_an_orphan_of_serve_stops_without_a_drain(engine: LLMEngine, make_worker: Any) -> None:
    """Its supervisor SIGKILLed, the worker gets the kernel's SIGTERM; Redis and the API
    are going too, so a drain would deliver nothing: it releases what it holds at once."""
    h: Harness = make_worker(supervisor_pid=os.getpid())  # not this worker's parent
    h.worker.drain_timeout = 60.0
    request = h.request(engine.tokenizer.encode(PROMPT), max_tokens=100_000, ignore_eos=True)
    h.send(request)
    wait_for(lambda: h.poll(0.05) or len(h.messages.get(request.id, [])) > 1)
    h.stop.set()
    stopped = time.monotonic()
    last = h.collect([request.id])[request.id][-1]
    assert last.error is not None and last.error.code == "worker_stopped"
    h.shutdown()
    assert time.monotonic() - stopped < 10
    assert h.exit_code == 0


def test_several_choices_and_prompt_logprobs(
    engine: LLMEngine, make_worker: Any, client: redis.Redis
) -> None:
    h: Harness = make_worker()
    prompt = engine.tokenizer.encode(PROMPT)
    request = h.request(prompt, n=2, temperature=1.0, seed=7, max_tokens=4, prompt_logprobs=1)
    msgs = h.collect([h.send(request)])[request.id]
    assert [m.seq for m in msgs] == list(range(len(msgs)))
    per_choice = {0: 0, 1: 0}
    for message in msgs:
        for choice in message.choices:
            per_choice[choice.index] += len(choice.token_ids)
    assert per_choice == {0: 4, 1: 4}
    usage = msgs[-1].usage
    assert usage is not None and usage.completion_tokens == 8
    stored = ReplyMessage.decode(client.get(h.names.result(request.id)))
    assert [c.index for c in stored.choices] == [0, 1]
    assert all(len(c.token_ids) == 4 and c.finish_reason == "length" for c in stored.choices)
    lps = stored.prompt_logprobs
    assert lps is not None and len(lps) == len(prompt) and lps[0] is None
    assert [lp.token_id for lp in lps[1:] if lp is not None] == prompt[1:]

    # Metrics count each choice's gaps between tokens (3 each, as vLLM's per-choice
    # requests do), all 8 tokens, and the longest choice apart.
    def histograms() -> dict[str, Any]:
        snapshot = json.loads(client.get(h.names.worker_metrics(h.worker.instance)) or "{}")
        return snapshot.get("histograms", {})

    wait_for(lambda: sum(histograms().get(m.REQUEST_GENERATION_TOKENS, {}).get("counts", [])))
    seen = histograms()
    assert sum(seen[m.INTER_TOKEN_LATENCY]["counts"]) == 6
    assert seen[m.REQUEST_GENERATION_TOKENS]["sum"] == 8
    assert seen[m.REQUEST_MAX_NUM_GENERATION_TOKENS]["sum"] == 4


def test_bad_words_arrive_as_words_and_the_engine_spells_them(
    engine: LLMEngine, make_worker: Any
) -> None:
    """The API sends vLLM's bad_words as written; the worker's engine tokenizes them, so
    the greedy answer that had the word no longer does."""
    h: Harness = make_worker()
    prompt = engine.tokenizer.encode("1, 2, 3, 4,")
    free = h.request(prompt, max_tokens=6, temperature=0.0)
    banned = h.request(prompt, max_tokens=6, temperature=0.0, bad_words=["6"])
    msgs = h.collect([h.send(free), h.send(banned)])

    def text(request_id: str) -> str:
        return "".join(c.text for m in msgs[request_id] for c in m.choices)

    assert " 6" in text(free.id)
    assert text(banned.id).startswith(" 5,") and "6" not in text(banned.id)


def test_worker_announces_the_other_names_it_serves(make_worker: Any, client: redis.Redis) -> None:
    """vLLM's --served-model-name A B: B in the heartbeat (the API routes it to A) and
    remembered, so a request for it while no worker lives is a 503, not a 404."""
    h: Harness = make_worker(served_model_aliases=["gpt-4o-mini"])
    beat = json.loads(client.get(h.names.worker(h.model, h.worker.instance)) or "{}")
    assert beat["model"] == h.model and beat["aliases"] == ["gpt-4o-mini"]
    assert client.get(h.names.known_alias("gpt-4o-mini")) == h.model


def test_a_worker_beats_into_its_beat_file(make_worker: Any) -> None:
    """What the image's `conveyor-healthcheck --ready` reads: touched from the first beat
    (the model is loaded by then) and on every beat after."""
    make_worker()
    path = beat_file(os.getpid())
    wait_for(path.exists)
    first = path.stat().st_mtime
    wait_for(lambda: path.stat().st_mtime > first)


def test_known_names_are_forgotten_an_hour_after_the_last_beat(
    make_worker: Any, client: redis.Redis
) -> None:
    """A retired or renamed model must not hold /health at 503 for ever: its name lives
    KNOWN_NAME_TTL_SECONDS past its workers' last heartbeat, which renews it."""
    h: Harness = make_worker(served_model_aliases=["gpt-4o-mini"])
    keys = (h.names.known_model(h.model), h.names.known_alias("gpt-4o-mini"))
    for key in keys:
        client.expire(key, 5)  # as if the hour had nearly passed
    wait_for(lambda: all(client.ttl(key) > 5 for key in keys))
    assert all(
        KNOWN_NAME_TTL_SECONDS - 5 <= client.ttl(key) <= KNOWN_NAME_TTL_SECONDS for key in keys
    )
    # Renewed only: a name deleted (an adapter unloaded) is not made again by a beat.
    client.delete(keys[1])
    time.sleep(3 * 0.2)  # three heartbeat intervals
    assert client.get(keys[1]) is None and client.ttl(keys[0]) > 5


def test_worker_publishes_the_sampling_defaults_it_serves(
    make_worker: Any, client: redis.Redis
) -> None:
    h: Harness = make_worker(
        generation_config="vllm",
        override_generation_config='{"temperature": 0.3, "max_new_tokens": 8}',
    )
    published = client.hget(h.names.tokenizer(h.model), "generation_config.json")
    assert json.loads(published or "") == {"temperature": 0.3, "max_new_tokens": 8}


def test_worker_reannounces_after_redis_lost_its_stream(
    engine: LLMEngine, make_worker: Any, client: redis.Redis
) -> None:
    h: Harness = make_worker()
    tokenizer_key = h.names.tokenizer(h.model)
    client.delete(h.stream, tokenizer_key, h.names.known_model(h.model))
    wait_for(lambda: client.exists(tokenizer_key) and client.exists(h.stream))
    request = h.request(engine.tokenizer.encode(PROMPT))
    msgs = h.collect([h.send(request)])[request.id]
    assert msgs[-1].usage is not None


def test_run_worker_builds_everything_from_settings(
    bundled_model_dir: Any, redis_url: str, client: redis.Redis
) -> None:
    settings = Settings(
        model=str(bundled_model_dir),
        served_model_name="smol",
        max_model_len=256,
        kv_cache_memory=32 << 20,
        redis_url=redis_url,
        redis_prefix=f"rw{uuid.uuid4().hex[:8]}",
        instance_id="worker-under-test",
    )
    names = BusNames(prefix=settings.redis_prefix)
    stop = threading.Event()
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(run_worker(settings, stop)))
    thread.start()
    try:
        wait_for(lambda: client.exists(names.worker("smol", "worker-under-test")), timeout=30)
    finally:
        stop.set()
        thread.join(30)
    assert codes == [0]
    assert not client.exists(names.worker("smol", "worker-under-test"))
    assert run_worker(Settings(redis_url=None)) == 2  # no Redis to serve from


def test_structured_output_crosses_the_wire_and_bad_constraints_are_refused_before_the_engine(
    engine: LLMEngine, make_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The constraint travels as a plain object; the intake compiles it (off the engine
    thread), so a grammar that cannot compile is a 400 that never reaches add_request."""
    admitted = admitted_ids(engine, monkeypatch)
    h: Harness = make_worker()
    prompt = engine.tokenizer.encode(PROMPT)
    choice = {"kind": "choice", "spec": '["Paris", "Lyon"]'}
    good = h.request(prompt, temperature=0.0, max_tokens=20, structured_output=choice)
    bad = h.request(prompt, structured_output={"kind": "regex", "spec": "[0-9"})
    garbled = h.request(prompt, structured_output={"kind": "regex"})
    replies = h.collect([h.send(r) for r in (good, bad, garbled)])
    text, _ = joined(replies[good.id])
    assert text in ("Paris", "Lyon")
    assert replies[good.id][-1].choices[-1].finish_reason == "stop"
    for rejected in (bad, garbled):
        (message,) = replies[rejected.id]
        assert message.error is not None
        assert (message.error.status, message.error.param) == (400, "structured_output")
    assert "unclosed character class" in (replies[bad.id][0].error.message or "")
    assert admitted == [good.id]
    assert h.pending() == 0


def test_an_engine_that_cannot_start_as_configured_exits_2(redis_url: str) -> None:
    """Exit status 2: `conveyor serve` stops instead of restarting the worker in vain."""
    # A beat file from this container's previous run (same pid, a kept /tmp) goes at
    # start: it must not pass the probes while the model loads, or here never loads.
    stale = beat_file(os.getpid())
    stale.touch()
    settings = Settings(redis_url=redis_url, model="/nonexistent/model")
    assert run_worker(settings, stop=threading.Event()) == 2
    assert not stale.exists()
    # Settings only the model can refuse: a context longer than it has, or a KV cache on
    # CPU too small for one sequence of it (the bundled model: 8192 tokens).
    # A --lora-modules adapter it cannot serve: that was exit 1, restarted six times.
    for refused in (
        {"max_model_len": 100_000},
        {"max_model_len": 4096, "num_gpu_blocks_override": 4, "device": "cpu"},
        {"max_model_len": 256, "lora_modules": ["sql=/nonexistent/adapter"]},
    ):
        assert run_worker(Settings(redis_url=redis_url, **refused), stop=threading.Event()) == 2


def test_a_worker_without_redis_exits_1_before_loading_weights(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from conveyor import redis_wait
    from workers import engine_worker

    monkeypatch.setattr(redis_wait, "REDIS_STARTUP_WAIT", 0.3)
    monkeypatch.setattr(engine_worker, "LLMEngine", None)  # calling it would fail loudly
    with caplog.at_level(logging.ERROR):
        assert run_worker(Settings(redis_url="redis://127.0.0.1:1/0"), stop=threading.Event()) == 1
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert line.startswith("cannot reach Redis at redis://127.0.0.1:1/0: ")


def test_a_hub_the_worker_cannot_reach_is_one_line_and_exit_1(
    redis_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a configuration error (the network may come back: `conveyor serve` restarts
    it), but one line, not a traceback per attempt."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    settings = Settings(redis_url=redis_url, model="acme/not-cached", max_model_len=256)
    with caplog.at_level(logging.ERROR):
        assert run_worker(settings, stop=threading.Event()) == 1
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert (
        "fetching it from the Hugging Face hub" in record.getMessage() and record.exc_info is None
    )
