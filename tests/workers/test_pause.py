"""A worker paused and resumed (vLLM's POST /pause, /resume), driven through Redis as the
API drives it: the `pause` key in, the heartbeat out."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conveyor.bus import BATCH_LANE
from conveyor.pause_request import PauseRequest
from conveyor.sleep_request import PARTS, SleepRequest
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from workers.intake import REQUEST_FIELD

from .conftest import Harness, tiny_llama_engine, wait_for
from .test_engine_worker import joined

PROMPT = [5, 77, 300, 12, 9, 8, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50]
LONG = 400  # tokens: long enough to be running when the pause comes


@pytest.fixture(scope="module")
def engine(make_random_model: Callable[[str], Path]) -> LLMEngine:
    """Overrides the package's engine."""
    return tiny_llama_engine(make_random_model)


def reference(engine: LLMEngine, **sampling: Any) -> list[int]:
    engine.add_request("ref", PROMPT, SamplingParams(temperature=0.0, **sampling))
    tokens: list[int] = []
    while engine.has_unfinished():
        for out in engine.step():
            tokens += [t for choice in out.outputs for t in choice.token_ids]
    return tokens


def ask(h: Harness, request: PauseRequest, reached: bool = True) -> None:
    """What POST /pause and /resume write; then (`reached`) wait for the heartbeat to say so."""
    h.client.set(h.names.pause(h.model), request.encode())
    h.client.publish(h.names.controls(h.model), request.gen)
    if reached:
        wait_for(lambda: h.beat().get("pause", {}).get("gen") == request.gen)


def running_long(h: Harness, stream: bool = True) -> str:
    long = h.request(PROMPT, stream=stream, max_tokens=LONG, ignore_eos=True)
    h.send(long)
    wait_for(lambda: (h.poll(0.05), long.id in h.messages)[1])  # it is running
    return long.id


def read_published(h: Harness) -> None:
    """Read every reply already published (`poll` reads one at a time)."""
    while True:
        before = sum(map(len, h.messages.values()))
        h.poll(0.3)
        if sum(map(len, h.messages.values())) == before:
            return


def quiet_for(h: Harness, request_id: str, seconds: float) -> None:
    """Nothing more arrives for `request_id` for `seconds`."""
    before = len(h.messages.get(request_id, []))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        h.poll(0.05)
    assert len(h.messages.get(request_id, [])) == before


def test_mode_abort_answers_running_requests_with_what_they_have_and_holds_new_ones(
    engine: LLMEngine, make_worker: Any
) -> None:
    want = reference(engine, max_tokens=6)
    h: Harness = make_worker()
    assert h.beat()["pause"] == {"gen": None, "paused": False}
    long = running_long(h)
    ask(h, PauseRequest(True, "g1"))
    assert h.beat()["pause"] == {"gen": "g1", "paused": True}
    messages = h.collect([long])[long]
    last = messages[-1]
    assert last.error is None
    assert [c.finish_reason for c in last.choices] == ["abort"]
    tokens = joined(messages)[1]
    assert 0 < len(tokens) < LONG
    assert last.usage is not None and last.usage.completion_tokens == len(tokens)
    assert not engine.has_unfinished()
    # Sent while paused: held (in the stream, or read by a read already waiting), not run.
    held = h.request(PROMPT)
    h.send(held)
    quiet_for(h, held.id, 0.6)
    assert not engine.has_unfinished()
    ask(h, PauseRequest(False, "g2"))
    assert h.beat()["pause"] == {"gen": "g2", "paused": False}
    assert joined(h.collect([held.id])[held.id])[1] == want


def test_mode_abort_ends_a_running_batch_line_with_a_503_to_send_again(
    engine: LLMEngine, make_worker: Any
) -> None:
    """A batch line is never answered cut short: its batch worker waits out the 503."""
    h: Harness = make_worker()
    line = h.request(PROMPT, stream=False, max_tokens=LONG, ignore_eos=True)
    h.client.xadd(h.names.requests(h.model, BATCH_LANE), {REQUEST_FIELD: line.encode()})
    wait_for(lambda: (h.poll(0.05), line.id in h.messages)[1])  # it is running
    ask(h, PauseRequest(True, "g1"))
    error = h.collect([line.id])[line.id][-1].error
    assert error is not None and (error.status, error.code) == (503, "model_paused")
    assert not engine.has_unfinished()
    ask(h, PauseRequest(False, "g2"))


def test_mode_wait_lets_running_requests_finish(engine: LLMEngine, make_worker: Any) -> None:
    h: Harness = make_worker()
    long = running_long(h)
    ask(h, PauseRequest(True, "g1", mode="wait"), reached=False)
    messages = h.collect([long])[long]
    assert messages[-1].error is None
    assert messages[-1].choices[-1].finish_reason == "length"
    assert len(joined(messages)[1]) == LONG
    wait_for(lambda: h.beat().get("pause", {}).get("gen") == "g1")
    held = h.request(PROMPT)
    h.send(held)
    quiet_for(h, held.id, 0.4)
    ask(h, PauseRequest(False, "g2"))
    assert h.collect([held.id])[held.id][-1].error is None


def test_mode_keep_freezes_running_requests_and_resume_carries_them_on_unchanged(
    engine: LLMEngine, make_worker: Any
) -> None:
    want = reference(engine, max_tokens=LONG, ignore_eos=True)
    h: Harness = make_worker()
    long = running_long(h)
    ask(h, PauseRequest(True, "g1", mode="keep"))
    read_published(h)  # steps' outputs published before the pause took effect
    quiet_for(h, long, 0.6)
    assert engine.has_unfinished()  # frozen, not ended
    ask(h, PauseRequest(False, "g2"))
    messages = h.collect([long])[long]
    assert messages[-1].error is None
    assert joined(messages)[1] == want


def test_a_pause_empties_the_prefix_cache_unless_told_not_to(
    engine: LLMEngine, make_worker: Any
) -> None:
    h: Harness = make_worker()
    for gen, clear_cache in [("g1", False), ("g3", True)]:
        served = h.request(PROMPT * 4)
        h.collect([h.send(served)])
        assert engine.block_manager.cached  # its full blocks are cached
        ask(h, PauseRequest(True, gen, clear_cache=clear_cache))
        assert bool(engine.block_manager.cached) is not clear_cache
        ask(h, PauseRequest(False, gen + "-resume"))


def test_a_worker_started_while_paused_reads_nothing_until_resumed(
    engine: LLMEngine, make_worker: Any
) -> None:
    h: Harness = make_worker(start=False)
    h.client.set(h.names.pause(h.model), PauseRequest(True, "g1").encode())
    h.start()
    wait_for(lambda: h.beat().get("pause", {}).get("gen") == "g1")
    held = h.request(PROMPT)
    h.send(held)
    quiet_for(h, held.id, 0.6)
    ask(h, PauseRequest(False, "g2"))
    assert h.collect([held.id])[held.id][-1].error is None


def test_a_paused_worker_asked_to_stop_gives_back_what_it_holds_at_once(
    engine: LLMEngine, make_worker: Any
) -> None:
    """Frozen or waiting, nothing can move before a /resume: a stopping worker hands its
    requests back to the stream now, not at the end of its drain grace (10 s here)."""
    h: Harness = make_worker()
    long = running_long(h, stream=False)
    ask(h, PauseRequest(True, "g1", mode="keep"))
    started = time.monotonic()
    h.shutdown()
    assert time.monotonic() - started < 5
    assert h.exit_code == 0
    assert not engine.has_unfinished()
    assert not h.finished(long)
    assert h.pending() == 1  # delivered, never acked: the janitor of a live worker reclaims it


def test_a_sleep_with_mode_wait_ends_frozen_requests_that_could_never_finish(
    engine: LLMEngine, make_worker: Any
) -> None:
    h: Harness = make_worker()
    long = running_long(h)
    ask(h, PauseRequest(True, "g1", mode="keep"))
    asked = SleepRequest(frozenset(PARTS), 1, "s1", mode="wait")
    h.client.set(h.names.sleep(h.model), asked.encode())
    error = h.collect([long])[long][-1].error
    assert error is not None and error.code == "model_sleeping"
    wait_for(lambda: h.beat().get("sleep", {}).get("gen") == "s1")
    h.client.set(h.names.sleep(h.model), SleepRequest(frozenset(), 1, "s2").encode())
    wait_for(lambda: h.beat().get("sleep", {}).get("gen") == "s2")
    ask(h, PauseRequest(False, "g2"))


def test_a_request_ended_before_its_first_token_counts_no_prompt(
    engine: LLMEngine, make_worker: Any
) -> None:
    """As vLLM counts an aborted request: its prompt was never processed."""
    h: Harness = make_worker()
    running_long(h)
    counted = h.worker.metrics.token_counts()[0]
    queued = [h.request(PROMPT * 25, max_tokens=4) for _ in range(20)]
    for request in queued:
        h.send(request)
    wait_for(lambda: engine.num_requests == 1 + len(queued))  # all admitted, most waiting
    ask(h, PauseRequest(True, "g1"))
    h.collect([r.id for r in queued])
    waited = [r for r in queued if not joined(h.messages[r.id])[1]]
    assert waited  # some never got their prefill: a step takes a few prompts
    assert all(h.messages[r.id][-1].choices[0].finish_reason == "abort" for r in waited)
    ran = len(queued) - len(waited)
    assert h.worker.metrics.token_counts()[0] == counted + ran * len(PROMPT * 25)
    ask(h, PauseRequest(False, "g2"))
