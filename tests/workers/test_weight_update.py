"""A worker reading a trainer's checkpoint into its model (vLLM's POST /update_weights with
the disk backend), driven through Redis as the API drives it: the `weights` key in, the
heartbeat out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conveyor.weight_update_request import WeightUpdateRequest
from engine.config import EngineConfig
from engine.llm import LLM
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams

from ..training_steps import later_step
from .conftest import Harness, wait_for
from .test_engine_worker import joined

PROMPT = [5, 77, 300, 12, 9, 8, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50]


@pytest.fixture(scope="module")
def first(make_random_model: Callable[[str], Path]) -> Path:
    return make_random_model("llama")


@pytest.fixture(scope="module")
def second(first: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return later_step(first, tmp_path_factory.mktemp("trainer") / "step-2", seed=5)


@pytest.fixture(scope="module")
def engine(first: Path) -> LLMEngine:
    """Overrides the package's engine: a tiny Llama of this module's own, since its
    weights change."""
    return LLMEngine(
        EngineConfig(model=str(first), served_model_name="tiny", kv_cache_memory=16 << 20)
    )


def answer_of(folder: Path) -> list[int]:
    llm = LLM(str(folder), kv_cache_memory=16 << 20)
    return (
        llm.generate([PROMPT], SamplingParams(temperature=0.0, max_tokens=6))[0]
        .choices[0]
        .token_ids
    )


def served(h: Harness) -> list[int]:
    request = h.request(PROMPT)
    return joined(h.collect([h.send(request)])[request.id])[1]


def ask(h: Harness, path: Path | str, gen: str) -> dict[str, Any]:
    """What POST /update_weights writes; the heartbeat's word once the worker reached it."""
    h.client.set(h.names.weights(h.model), WeightUpdateRequest(str(path), gen).encode())
    h.client.publish(h.names.controls(h.model), gen)
    wait_for(lambda: h.beat().get("weights", {}).get("gen") == gen, timeout=30)
    return h.beat()["weights"]


def test_a_worker_serves_the_weights_it_is_asked_to_and_a_later_one_joins_them(
    engine: LLMEngine, make_worker: Any, first: Path, second: Path
) -> None:
    want_first, want_second = answer_of(first), answer_of(second)
    assert want_first != want_second
    h: Harness = make_worker()
    assert h.beat()["weights"] == {"gen": None, "path": None, "error": None}
    assert served(h) == want_first
    assert ask(h, second, "g1") == {"gen": "g1", "path": str(second), "error": None}
    assert served(h) == want_second
    h.shutdown()
    # A worker started now (a restart, another replica) reads the same folder in first.
    engine.update_weights(str(first))  # as its own --model would load it
    later: Harness = make_worker(start=False)
    later.client.set(
        later.names.weights(later.model), WeightUpdateRequest(str(second), "g1").encode()
    )
    later.start()
    assert served(later) == want_second
    assert later.beat()["weights"]["gen"] == "g1"


def test_a_folder_that_cannot_be_read_is_reported_and_the_old_weights_serve_on(
    engine: LLMEngine, make_worker: Any, first: Path, tmp_path: Path
) -> None:
    engine.update_weights(str(first))
    want = answer_of(first)
    h: Harness = make_worker()
    reached = ask(h, tmp_path / "missing", "g1")
    assert reached["gen"] == "g1" and "must be a local directory" in reached["error"]
    assert served(h) == want


def test_an_update_put_back_after_failing_is_loaded_only_by_a_worker_started_since(
    engine: LLMEngine,
    make_worker: Any,
    first: Path,
    second: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The API puts the key back to the folder served before a failed update, under the
    failed one's gen: the workers serving it read nothing again; one started since does."""
    engine.update_weights(str(first))
    want_second = answer_of(second)
    reads: list[str] = []
    update = engine.update_weights
    monkeypatch.setattr(engine, "update_weights", lambda path: (reads.append(path), update(path)))
    h: Harness = make_worker()
    ask(h, second, "e:1")
    assert ask(h, tmp_path / "missing", "e:2")["error"] is not None
    h.client.set(h.names.weights(h.model), WeightUpdateRequest(str(second), "e:2").encode())
    h.client.publish(h.names.controls(h.model), "e:2")
    assert served(h) == want_second
    h.shutdown()  # by now it read the key again: nothing more was loaded
    assert reads == [str(second), str(tmp_path / "missing")]
    engine.update_weights(str(first))
    later: Harness = make_worker(start=False)  # on a bus of its own: given the same key
    put_back = WeightUpdateRequest(str(second), "e:2").encode()
    later.client.set(later.names.weights(later.model), put_back)
    later.start()
    wait_for(lambda: later.beat().get("weights", {}).get("gen") == "e:2", timeout=30)
    assert served(later) == want_second


def test_a_key_put_back_to_the_model_folder_loads_nothing_in_a_new_worker(
    engine: LLMEngine, make_worker: Any, first: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An update every worker failed, with none before it: the key says `--model`'s."""
    engine.update_weights(str(first))
    reads: list[str] = []
    monkeypatch.setattr(engine, "update_weights", reads.append)
    h: Harness = make_worker(start=False)
    h.client.set(h.names.weights(h.model), WeightUpdateRequest(None, "e:1").encode())
    h.start()
    wait_for(lambda: h.beat().get("weights", {}).get("gen") == "e:1", timeout=30)
    assert h.beat()["weights"] == {"gen": "e:1", "path": None, "error": None}
    assert reads == []
