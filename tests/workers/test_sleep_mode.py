"""A worker in sleep mode and resetting its prefix cache, driven through Redis as the API
drives it: the `sleep` and `prefix_cache_reset` keys in, the heartbeat out."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from conveyor.sleep_request import PARTS, SleepRequest
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams

from .conftest import Harness, wait_for
from .test_engine_worker import joined

PROMPT = [5, 77, 300, 12, 9, 8, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50]


@pytest.fixture(scope="module")
def engine(make_random_model: Callable[[str], Path]) -> LLMEngine:
    """Overrides the package's engine: a tiny Llama of this module's own, since it sleeps."""
    config = EngineConfig(
        model=str(make_random_model("llama")), served_model_name="tiny", kv_cache_memory=16 << 20
    )
    return LLMEngine(config)


@pytest.fixture(autouse=True)
def awake_after(engine: LLMEngine) -> Iterator[None]:
    yield
    if engine.asleep:
        engine.wake_up()


def reference(engine: LLMEngine) -> list[int]:
    engine.add_request("ref", PROMPT, SamplingParams(temperature=0.0, max_tokens=6))
    tokens: list[int] = []
    while engine.has_unfinished():
        for out in engine.step():
            tokens += [t for choice in out.outputs for t in choice.token_ids]
    return tokens


def ask(h: Harness, gen: str, asleep: tuple[str, ...] = PARTS, level: int = 1) -> None:
    """What POST /sleep and /wake_up write; then wait for the heartbeat to say so."""
    request = SleepRequest(frozenset(asleep), level, gen)
    h.client.set(h.names.sleep(h.model), request.encode())
    wait_for(lambda: h.beat().get("sleep", {}).get("gen") == gen)


def test_a_sleeping_worker_refuses_requests_then_wakes_and_answers_as_before(
    engine: LLMEngine, make_worker: Any
) -> None:
    want = reference(engine)
    h: Harness = make_worker()
    assert h.beat()["sleeping"] is False
    ask(h, "g1", level=2)
    assert h.beat()["sleep"] == {"gen": "g1", "asleep": sorted(PARTS), "level": 2, "error": None}
    assert h.beat()["sleeping"] is True
    assert engine.asleep == set(PARTS)
    refused = h.request(PROMPT)
    (last,) = h.collect([h.send(refused)])[refused.id]
    assert last.error is not None
    assert (last.error.status, last.error.code) == (503, "model_sleeping")
    assert "POST /wake_up" in last.error.message
    ask(h, "g2", asleep=())
    assert h.beat()["sleep"]["asleep"] == [] and h.beat()["sleeping"] is False
    served = h.request(PROMPT)
    assert joined(h.collect([h.send(served)])[served.id])[1] == want


def test_sleeping_deeper_over_a_sleep_takes_effect(engine: LLMEngine, make_worker: Any) -> None:
    h: Harness = make_worker()
    ask(h, "g1", level=1)
    ask(h, "g2", level=2)
    assert h.beat()["sleep"]["level"] == 2 and engine.sleep_level == 2


def test_waking_one_part_keeps_refusing_until_both_are_awake(
    engine: LLMEngine, make_worker: Any
) -> None:
    h: Harness = make_worker()
    ask(h, "g1")
    ask(h, "g2", asleep=("kv_cache",))
    assert engine.asleep == {"kv_cache"} and h.beat()["sleeping"] is True
    refused = h.request(PROMPT)
    assert h.collect([h.send(refused)])[refused.id][-1].error is not None
    ask(h, "g3", asleep=())
    assert engine.asleep == frozenset()


def _running_long(h: Harness) -> str:
    long = h.request(PROMPT, max_tokens=400, ignore_eos=True)
    h.send(long)
    wait_for(lambda: (h.poll(0.05), long.id in h.messages)[1])  # it is running
    return long.id


def test_mode_wait_lets_held_requests_finish_before_the_engine_sleeps(
    engine: LLMEngine, make_worker: Any
) -> None:
    h: Harness = make_worker()
    long = _running_long(h)
    asked = SleepRequest(frozenset(PARTS), 1, "g1", mode="wait")
    h.client.set(h.names.sleep(h.model), asked.encode())
    messages = h.collect([long])[long]
    assert messages[-1].error is None
    assert len(joined(messages)[1]) == 400  # not cut short
    wait_for(lambda: h.beat().get("sleep", {}).get("asleep") == sorted(PARTS))


def test_mode_abort_ends_held_requests_with_a_503_and_sleeps_at_once(
    engine: LLMEngine, make_worker: Any
) -> None:
    h: Harness = make_worker()
    long = _running_long(h)
    h.client.set(h.names.sleep(h.model), SleepRequest(frozenset(PARTS), 1, "g1").encode())
    messages = h.collect([long])[long]
    error = messages[-1].error
    assert error is not None and (error.status, error.code) == (503, "model_sleeping")
    assert "was put to sleep while this request ran" in error.message
    assert len(joined(messages)[1]) < 400
    wait_for(lambda: h.beat().get("sleep", {}).get("asleep") == sorted(PARTS))
    assert not engine.has_unfinished()


def test_a_sleeping_worker_leaves_requests_to_an_awake_peer(
    engine: LLMEngine, make_worker: Any, client: redis.Redis
) -> None:
    h: Harness = make_worker()
    ask(h, "g1")
    # A peer of the same model whose heartbeat says it serves (it reads nothing here).
    peer_beat = h.names.worker(h.model, "peer-1")
    client.set(peer_beat, json.dumps({"model": h.model, "sleeping": False}))
    wait_for(lambda: h.worker.sleep.peers_awake)
    time.sleep(0.5)  # a read already blocking when it saw the peer has ended
    left = h.request(PROMPT)
    h.send(left)
    h.poll(1.0)
    assert left.id not in h.messages  # not read here: it waits for the peer
    assert client.xlen(h.stream) == 1 and h.pending() == 0
    client.delete(peer_beat)  # the peer is gone: this worker answers, and refuses
    (last,) = h.collect([left.id])[left.id]
    assert last.error is not None and last.error.code == "model_sleeping"


def test_a_worker_started_while_its_model_sleeps_joins_asleep(
    engine: LLMEngine, make_worker: Any
) -> None:
    h: Harness = make_worker(start=False)
    h.client.set(h.names.sleep(h.model), SleepRequest(frozenset(PARTS), 1, "g1").encode())
    h.start()
    assert h.beat()["sleeping"] is True  # from its first beat on: never routed to awake
    wait_for(lambda: h.beat().get("sleep", {}).get("gen") == "g1")
    assert engine.asleep == set(PARTS)


def test_a_failed_wake_is_reported_and_a_second_call_tries_again(
    engine: LLMEngine, make_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    want = reference(engine)
    h: Harness = make_worker()
    ask(h, "g1", level=2)
    reload = engine._sleep_mode.reload

    def unreadable() -> Any:
        raise OSError("checkpoint unreadable")

    monkeypatch.setattr(engine._sleep_mode, "reload", unreadable)
    ask(h, "g2", asleep=())
    state = h.beat()["sleep"]
    assert "OSError: checkpoint unreadable" in state["error"]
    assert "weights" in state["asleep"] and h.beat()["sleeping"] is True
    monkeypatch.setattr(engine._sleep_mode, "reload", reload)
    ask(h, "g3", asleep=())
    assert h.beat()["sleep"]["error"] is None and engine.asleep == frozenset()
    served = h.request(PROMPT)
    assert joined(h.collect([h.send(served)])[served.id])[1] == want


def test_the_prefix_cache_is_reset_once_per_gen(
    engine: LLMEngine, make_worker: Any, client: redis.Redis
) -> None:
    h: Harness = make_worker(start=False)
    key = h.names.prefix_cache_reset(h.model)
    client.set(key, "before-start")
    h.start()
    # Asked before this worker started: its cache started empty, so it is reached already.
    assert h.beat()["prefix_cache_reset"] == "before-start"
    first = h.request(PROMPT)
    h.collect([h.send(first)])
    assert engine.block_manager.cached  # the prompt's full blocks are cached
    client.set(key, "r1")
    wait_for(lambda: h.beat().get("prefix_cache_reset") == "r1")
    assert engine.block_manager.cached == {}


def test_a_nudge_on_the_controls_channel_is_acted_on_before_the_next_poll(
    engine: LLMEngine, make_worker: Any, client: redis.Redis
) -> None:
    h: Harness = make_worker(heartbeat_interval=10.0, heartbeat_ttl=60.0)
    time.sleep(0.5)  # the controls thread has read the keys and waits for the next poll
    client.set(h.names.sleep(h.model), SleepRequest(frozenset(PARTS), 1, "g1").encode())
    client.publish(h.names.controls(h.model), "g1")
    # Well inside the 10 s poll (and heartbeat) interval: read, slept and announced at once.
    wait_for(lambda: h.beat().get("sleep", {}).get("gen") == "g1", timeout=3.0)
