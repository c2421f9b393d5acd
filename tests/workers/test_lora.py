"""A worker serving LoRA adapters: it announces them, and each request's `lora` picks the
adapter its tokens come from (the engine's own output with that adapter)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from benchmarks.random_lora import build_random_lora
from conveyor.runtime_lora import RuntimeLoRA
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.lora_config import LoRAConfig
from engine.sampling_params import SamplingParams
from workers import lora_sync

from .conftest import Harness, wait_for
from .test_engine_worker import joined

PROMPT = [5, 77, 300, 12, 9, 8]


@pytest.fixture(scope="module")
def adapter_dir(make_random_model: Callable[[str], Path], tmp_path_factory) -> Path:
    return build_random_lora(
        tmp_path_factory.mktemp("lora") / "a", make_random_model("llama"), rank=8, alpha=16
    )


@pytest.fixture(scope="module")
def engine(make_random_model: Callable[[str], Path], adapter_dir: Path) -> LLMEngine:
    """Overrides the package's engine: a tiny Llama with one adapter, `sql`."""
    config = EngineConfig(
        model=str(make_random_model("llama")),
        served_model_name="tiny",
        kv_cache_memory=16 << 20,
        lora_config=LoRAConfig.from_entries([f"sql={adapter_dir}"], 16, runtime_updates=True),
    )
    return LLMEngine(config)


@pytest.fixture(scope="module")
def second_adapter(make_random_model: Callable[[str], Path], tmp_path_factory) -> Path:
    return build_random_lora(
        tmp_path_factory.mktemp("lora") / "b", make_random_model("llama"), rank=4, seed=9
    )


def reference(engine: LLMEngine, lora: str | None) -> list[int]:
    """Greedy tokens of the engine itself, run before any worker holds it."""
    engine.add_request("ref", PROMPT, SamplingParams(temperature=0.0, max_tokens=6), lora=lora)
    tokens: list[int] = []
    while engine.has_unfinished():
        for out in engine.step():
            tokens += [t for choice in out.outputs for t in choice.token_ids]
    return tokens


def test_requests_pick_their_adapter(
    engine: LLMEngine, make_worker: Any, client: redis.Redis, adapter_dir: Path
) -> None:
    want = {lora: reference(engine, lora) for lora in ("sql", None)}
    assert want["sql"] != want[None]
    h: Harness = make_worker()
    beat = json.loads(client.get(h.names.worker(h.model, h.worker.instance)))
    assert beat["loras"] == {"sql": str(adapter_dir)}
    assert client.get(h.names.known_adapter("sql")) == h.model
    assert not client.exists(h.names.known_model("sql"))  # /health waits for models only

    plain = h.request(PROMPT)
    with_sql = dataclasses.replace(h.request(PROMPT), lora="sql")
    unknown = dataclasses.replace(h.request(PROMPT), lora="poet")
    replies = h.collect([h.send(r) for r in (plain, with_sql, unknown)])
    assert joined(replies[plain.id])[1] == want[None]
    assert joined(replies[with_sql.id])[1] == want["sql"]
    # An adapter this worker lacks (its peers have it: a rollout) is worth a retry.
    (refused,) = replies[unknown.id]
    assert refused.error is not None
    assert (refused.error.status, refused.error.code) == (503, "no_worker")
    assert "does not serve the LoRA adapter `poet`" in refused.error.message
    assert h.pending() == 0


def test_runtime_adapters_follow_the_models_hash(
    engine: LLMEngine,
    make_worker: Any,
    client: redis.Redis,
    second_adapter: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What /v1/load_lora_adapter and /v1/unload_lora_adapter write: the worker loads,
    announces, serves and drops adapters to match, and reports a load that fails."""
    engine.load_lora("poet", str(second_adapter))
    want = reference(engine, "poet")
    engine.unload_lora("poet")
    monkeypatch.setattr(lora_sync, "RETRY_FAILED_AFTER", 0.5)
    h: Harness = make_worker(start=False, allow_runtime_lora_updating=True)
    requested, errors = h.names.runtime_loras(h.model), h.names.lora_errors(h.model)
    poet = RuntimeLoRA(str(second_adapter), "gen-1")
    client.hset(requested, mapping={"poet": poet.encode(), "sql": RuntimeLoRA("/x", "g").encode()})

    def beat() -> dict[str, Any]:
        raw = client.get(h.names.worker(h.model, h.worker.instance))
        return json.loads(raw) if raw else {}

    # A worker joining serves the runtime adapters before it first announces itself
    # (an adapter is offered only while every worker announces it).
    h.start()
    first = beat()
    assert first["loras"]["poet"] == str(second_adapter) and first["lora_gens"] == {"poet": "gen-1"}
    assert first["loras"]["sql"] != "/x"  # loaded at start-up: never replaced
    served = dataclasses.replace(h.request(PROMPT), lora="poet")
    assert joined(h.collect([h.send(served)])[served.id])[1] == want

    # A reload from the same folder is a new generation: read again and announced.
    client.hset(requested, "poet", RuntimeLoRA(str(second_adapter), "gen-2").encode())
    wait_for(lambda: beat()["lora_gens"].get("poet") == "gen-2")

    # A folder that is not there: reported under its generation, and retried later.
    client.hset(requested, "broken", RuntimeLoRA("/no/such/dir", "gen-3").encode())
    wait_for(lambda: client.hexists(errors, "broken"))
    failure = json.loads(client.hget(errors, "broken"))
    assert (failure["gen"], failure["instance"]) == ("gen-3", h.worker.instance)
    assert "no adapter_config.json" in failure["error"]
    client.hdel(errors, "broken")
    wait_for(lambda: client.hexists(errors, "broken"), timeout=5)

    client.hdel(requested, "poet", "broken")
    wait_for(lambda: "poet" not in beat()["loras"])
    gone = dataclasses.replace(h.request(PROMPT), lora="poet")
    (refused,) = h.collect([h.send(gone)])[gone.id]
    assert refused.error is not None and refused.error.status == 503
