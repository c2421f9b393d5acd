"""A worker told to end requests (vLLM's POST /abort_requests), driven through Redis as the
API drives it: the call kept in the `interrupted` set and published on `interrupt`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from conveyor.bus import BATCH_LANE
from conveyor.interrupt_request import InterruptRequest
from conveyor.pause_request import PauseRequest
from engine.llm_engine import LLMEngine
from workers.intake import REQUEST_FIELD

from .conftest import Harness, tiny_llama_engine, wait_for
from .test_engine_worker import joined
from .test_pause import LONG, PROMPT, ask, quiet_for, reference, running_long


@pytest.fixture(scope="module")
def engine(make_random_model: Callable[[str], Path]) -> LLMEngine:
    """Overrides the package's engine."""
    return tiny_llama_engine(make_random_model)


def call(h: Harness, *ids: str, publish: bool = True) -> InterruptRequest:
    """What POST /abort_requests writes (every request without `ids`)."""
    request = InterruptRequest(tuple(ids), time.time())
    h.client.zadd(h.names.interrupted, request.members())
    if publish:
        h.client.publish(h.names.interrupt, request.encode())
    return request


def ended_with_what_it_had(h: Harness, request_id: str) -> list[int]:
    messages = h.collect([request_id])[request_id]
    assert messages[-1].error is None
    assert [c.finish_reason for c in messages[-1].choices] == ["abort"]
    tokens = joined(messages)[1]
    assert messages[-1].usage is not None
    assert messages[-1].usage.completion_tokens == len(tokens)
    return tokens


def test_a_request_named_by_its_client_id_ends_with_what_it_has_and_others_run_on(
    engine: LLMEngine, make_worker: Any
) -> None:
    want = reference(engine, max_tokens=LONG, ignore_eos=True)
    h: Harness = make_worker()
    named = replace(
        h.request(PROMPT, max_tokens=LONG, ignore_eos=True), public_id="chatcmpl-rollout-7"
    )
    other = h.request(PROMPT, max_tokens=LONG, ignore_eos=True)
    h.send(named)
    h.send(other)
    wait_for(lambda: (h.poll(0.05), named.id in h.messages and other.id in h.messages)[1])
    call(h, "chatcmpl-rollout-7", "chatcmpl-not-here")
    assert 0 < len(ended_with_what_it_had(h, named.id)) < LONG
    # The other one was not named: it runs to its end, unchanged.
    messages = h.collect([other.id], timeout=60)[other.id]
    assert messages[-1].choices[-1].finish_reason == "length"
    assert joined(messages)[1] == want
    assert not engine.has_unfinished()


def test_every_request_ends_without_ids_and_a_request_sent_after_runs(
    engine: LLMEngine, make_worker: Any
) -> None:
    want = reference(engine, max_tokens=6)
    h: Harness = make_worker()
    first, second = running_long(h), running_long(h)
    call(h)
    for request_id in (first, second):
        assert 0 < len(ended_with_what_it_had(h, request_id)) < LONG
    assert not engine.has_unfinished()
    after = h.request(PROMPT)
    h.send(after)
    messages = h.collect([after.id])[after.id]
    assert messages[-1].choices[-1].finish_reason == "length"
    assert joined(messages)[1] == want


def test_a_queued_request_is_ended_by_the_worker_that_reads_it_later(
    engine: LLMEngine, make_worker: Any
) -> None:
    """Sent before the call, read after it by a worker that was not subscribed then (it
    reads the `interrupted` set when it subscribes): answered at once with no text."""
    h: Harness = make_worker(start=False)
    queued = replace(h.request(PROMPT, max_tokens=LONG), public_id="cmpl-mine")
    sent_again = replace(h.request(PROMPT, max_tokens=4), public_id="cmpl-mine")
    everyone = h.request(PROMPT, max_tokens=LONG)
    h.send(queued)
    h.send(everyone)
    call(h, "cmpl-mine", publish=False)
    call(h, publish=False)
    time.sleep(0.01)
    # The same client id sent after the call: it runs (an id names what came before).
    h.send(replace(sent_again, arrival=time.time()))
    h.start()
    for request_id in (queued.id, everyone.id):
        assert ended_with_what_it_had(h, request_id) == []
    messages = h.collect([sent_again.id])[sent_again.id]
    assert messages[-1].choices[-1].finish_reason == "length"
    assert len(joined(messages)[1]) == 4


def test_a_batch_line_is_left_to_its_batch(engine: LLMEngine, make_worker: Any) -> None:
    h: Harness = make_worker()
    line = h.request(PROMPT, stream=False, max_tokens=64, ignore_eos=True)
    h.client.xadd(h.names.requests(h.model, BATCH_LANE), {REQUEST_FIELD: line.encode()})
    wait_for(lambda: engine.num_requests == 1)
    call(h)
    last = h.collect([line.id], timeout=60)[line.id][-1]
    assert last.error is None
    assert last.choices[-1].finish_reason == "length"


def test_while_paused_frozen_and_held_requests_end_at_once(
    engine: LLMEngine, make_worker: Any
) -> None:
    """Frozen ones at once; queued ones (a paused model reads none) as it resumes."""
    h: Harness = make_worker()
    frozen = running_long(h)
    ask(h, PauseRequest(True, "g1", mode="keep"))
    queued = h.request(PROMPT)
    h.send(queued)
    call(h)
    assert 0 < len(ended_with_what_it_had(h, frozen)) < LONG
    assert not engine.has_unfinished()
    # Sent while paused and after the call: held, not ended, and run after /resume.
    held = h.request(PROMPT)
    h.send(held)
    quiet_for(h, held.id, 0.6)
    assert not h.finished(queued.id)
    ask(h, PauseRequest(False, "g2"))
    assert ended_with_what_it_had(h, queued.id) == []
    assert h.collect([held.id])[held.id][-1].choices[-1].finish_reason == "length"


def test_a_beam_search_with_no_partial_answer_gets_a_503(
    engine: LLMEngine, make_worker: Any
) -> None:
    h: Harness = make_worker()
    beam = h.request(PROMPT, n=2, use_beam_search=True, max_tokens=LONG, ignore_eos=True)
    h.send(beam)
    wait_for(lambda: engine.num_requests == 1)
    time.sleep(0.2)
    call(h, beam.id)
    error = h.collect([beam.id])[beam.id][-1].error
    assert error is not None and (error.status, error.code) == (503, "request_aborted")
    assert not engine.has_unfinished()
