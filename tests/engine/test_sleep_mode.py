"""Sleep mode: the memory really goes, and a woken engine answers exactly as before."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from benchmarks.random_lora import build_random_lora
from engine.llm import LLM, greedy
from engine.lora_config import LoRAConfig
from engine.sleep_mode import EngineAsleep, SleepMode, weight_tensors

PROMPTS = [[5, 77, 300, 12, 9, 8, 7, 6, 5, 4, 3, 2, 1, 40, 41, 42, 43], [1200, 44, 5, 900]]


def _answers(llm: LLM, lora: str | None = None) -> list[list[int]]:
    return [r.choices[0].token_ids for r in llm.generate(PROMPTS, greedy(12), lora=lora)]


def _kv_numel(llm: LLM) -> int:
    return sum(k.numel() + v.numel() for k, v in llm.engine.runner.kv_caches)


def _weights_numel(llm: LLM) -> int:
    return sum(t.numel() for _, t in weight_tensors(llm.engine.runner.model))


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model_dir(request: pytest.FixtureRequest, make_random_model: Callable[[str], Path]) -> Path:
    """An untied and a tied (embedding shared with the LM head) model."""
    return make_random_model(request.param)


@pytest.mark.parametrize("level", [1, 2])
def test_a_woken_engine_answers_as_before(model_dir: Path, level: int) -> None:
    llm = LLM(str(model_dir), num_kv_blocks=160, block_size=4)
    before = _answers(llm)
    kv, weights = _kv_numel(llm), _weights_numel(llm)
    llm.engine.sleep(level)
    assert llm.engine.asleep == {"weights", "kv_cache"}
    assert llm.engine.sleep_level == level
    assert _kv_numel(llm) == 0
    # Nothing else holds the cache's memory (a view's base would keep a mapping alive).
    assert all(k._base is None and v._base is None for k, v in llm.engine.runner.kv_caches)
    # On a CPU the weights are in host memory already: level 1 leaves them, level 2 frees.
    assert _weights_numel(llm) == (weights if level == 1 else 0)
    llm.engine.wake_up()
    assert llm.engine.asleep == frozenset()
    assert (_kv_numel(llm), _weights_numel(llm)) == (kv, weights)
    assert _answers(llm) == before


def test_the_prefix_cache_starts_empty_after_waking(model_dir: Path) -> None:
    """Through the LLM's own names for them, as vLLM's LLM has them."""
    llm = LLM(str(model_dir), num_kv_blocks=160, block_size=4)
    before = _answers(llm)
    _answers(llm)
    hits = llm.engine.stats().prefix_cache_hits
    assert hits > 0  # the second round read the first one's blocks
    llm.sleep(1)
    llm.wake_up()
    assert llm.engine.block_manager.cached == {}
    assert _answers(llm) == before
    assert llm.engine.stats().prefix_cache_hits == hits  # zeroed KV was never read


def test_parts_wake_one_at_a_time_and_only_both_serve(model_dir: Path) -> None:
    llm = LLM(str(model_dir), num_kv_blocks=160, block_size=4)
    before = _answers(llm)
    llm.engine.sleep(2)
    llm.engine.wake_up(["weights"])
    assert llm.engine.asleep == {"kv_cache"}
    assert _kv_numel(llm) == 0
    with pytest.raises(EngineAsleep, match="kv_cache"):
        llm.generate(PROMPTS[:1], greedy(2))
    llm.engine.wake_up(["kv_cache"])
    assert _answers(llm) == before


def test_sleeping_deeper_drops_the_host_copy_and_shallower_keeps_the_depth(
    model_dir: Path,
) -> None:
    llm = LLM(str(model_dir), num_kv_blocks=160, block_size=4)
    before = _answers(llm)
    llm.engine.sleep(1)
    llm.engine.sleep(2)
    assert llm.engine.sleep_level == 2 and _weights_numel(llm) == 0
    llm.engine.sleep(1)
    assert llm.engine.sleep_level == 2
    llm.engine.wake_up()
    assert _answers(llm) == before


def test_an_engine_with_work_refuses_to_sleep_and_bad_arguments_are_refused(
    model_dir: Path,
) -> None:
    llm = LLM(str(model_dir), num_kv_blocks=160, block_size=4)
    llm.engine.add_request("r", PROMPTS[0], greedy(4))
    with pytest.raises(RuntimeError, match="1 unfinished"):
        llm.engine.sleep(1)
    assert llm.engine.asleep == frozenset()
    llm.engine.abort("r")
    with pytest.raises(ValueError, match="1 or 2"):
        llm.engine.sleep(3)
    llm.engine.sleep(1)
    with pytest.raises(ValueError, match="unknown wake_up tags"):
        llm.engine.wake_up(["kv"])
    assert llm.engine.asleep == {"weights", "kv_cache"}


def test_lora_adapters_survive_a_reload_from_the_checkpoint(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    base = make_random_model("llama")
    adapter = build_random_lora(tmp_path / "a", base, rank=8, alpha=16, seed=3)
    llm = LLM(
        str(base),
        num_kv_blocks=160,
        block_size=4,
        lora_config=LoRAConfig.from_entries([f"a={adapter}"], 8),
    )
    base_before, adapted_before = _answers(llm), _answers(llm, lora="a")
    assert base_before != adapted_before
    llm.engine.sleep(2)
    llm.engine.wake_up()
    assert (_answers(llm), _answers(llm, lora="a")) == (base_before, adapted_before)


def test_online_fp8_is_quantized_again_on_waking(make_random_model: Callable[[str], Path]) -> None:
    llm = LLM(str(make_random_model("llama")), num_kv_blocks=160, block_size=4, quantization="fp8")
    before = _answers(llm)
    llm.engine.sleep(2)
    llm.engine.wake_up()
    assert _answers(llm) == before


def test_names_are_stable_across_builds_and_a_shared_tensor_is_listed_once() -> None:
    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10))
        model[1].weight = model[0].weight  # tied, as an LM head to its embedding
        model[1].table = torch.ones(3)  # a plain tensor attribute
        return model

    names = [name for name, _ in weight_tensors(build())]
    assert names == ["0.weight", "1.bias", "1.table"]
    assert names == [name for name, _ in weight_tensors(build())]


class _Graphs:
    """Stands in for DecodeGraphs (recording needs a GPU): what was asked of it, in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def release(self) -> None:
        self.calls.append("release")

    def record_or_release(self) -> bool:
        self.calls.append("record")
        return True


def test_decode_graphs_are_released_and_recorded_again_once_all_is_awake() -> None:
    from engine.block_manager import BlockManager

    model = torch.nn.Linear(4, 4)
    kv = [(torch.zeros(8, 4, 1, 4), torch.zeros(8, 4, 1, 4))]
    graphs = _Graphs()
    sleep = SleepMode(model, kv, BlockManager(8, 4), graphs, reload=lambda: model)  # type: ignore[arg-type]
    sleep.sleep(1)
    sleep.wake_up(["kv_cache"])
    assert graphs.calls == ["release"]  # the weights still sleep: nothing to record yet
    sleep.wake_up(["weights"])
    assert graphs.calls == ["release", "record"]
    assert kv[0][0].shape == (8, 4, 1, 4)


def test_level_1_copies_keep_shared_memory_and_strides() -> None:
    """What a GPU's level 1 does (on a CPU, where it is otherwise skipped): each storage
    copied once, and on waking a tied head shares its embedding's memory again (not a
    second copy) and a transposed view keeps its strides."""
    from engine.block_manager import BlockManager

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10))
    model[1].weight = model[0].weight
    model[1].transposed = model[0].weight.detach().t()  # another tensor, the same memory
    before = {name: t.clone() for name, t in weight_tensors(model)}
    sleep = SleepMode(model, [], BlockManager(8, 4), None, reload=lambda: model)
    tensors = list(weight_tensors(model))
    sleep._copy_to_host(tensors)
    assert len(sleep._host) == 2  # the embedding's storage and the bias's
    for _, tensor in tensors:
        tensor.data = torch.empty(0, dtype=tensor.dtype)
    sleep._copy_to_device()
    after = dict(weight_tensors(model))
    for name, tensor in after.items():
        assert torch.equal(tensor, before[name]), name
    assert after["1.transposed"].stride() == (1, 4)
    assert after["1.transposed"].data_ptr() == after["0.weight"].data_ptr()


def test_a_wake_that_fails_partway_frees_what_it_put_back_and_can_be_tried_again() -> None:
    from engine.block_manager import BlockManager

    class NoRoom:
        def to(self, device: torch.device) -> torch.Tensor:
            raise torch.OutOfMemoryError("no device memory yet")

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 6)
    before = {name: t.clone() for name, t in weight_tensors(model)}
    sleep = SleepMode(model, [], BlockManager(8, 4), None, reload=lambda: model)
    tensors = list(weight_tensors(model))
    sleep._copy_to_host(tensors)
    for _, tensor in tensors:
        tensor.data = torch.empty(0, dtype=tensor.dtype)
    bias_key = sleep._layout["bias"][0]
    kept, sleep._host[bias_key] = sleep._host[bias_key], NoRoom()  # type: ignore[assignment]
    with pytest.raises(torch.OutOfMemoryError):
        sleep._copy_to_device()
    assert all(t.numel() == 0 for _, t in weight_tensors(model))  # the weight went again
    sleep._host[bias_key] = kept
    sleep._copy_to_device()
    assert all(torch.equal(t, before[name]) for name, t in weight_tensors(model))


@pytest.mark.parametrize("family", ["gemma3", "gpt_oss"])
def test_models_with_more_kinds_of_tensors_wake_to_the_same_answers(
    make_random_model: Callable[[str], Path], family: str
) -> None:
    """Local rotary tables (Gemma 3), attention sinks and MoE experts (gpt-oss): each is
    put away and rebuilt from the checkpoint by name."""
    llm = LLM(str(make_random_model(family)), num_kv_blocks=160, block_size=4)
    before = _answers(llm)
    llm.engine.sleep(2)
    assert _weights_numel(llm) == 0
    llm.engine.wake_up()
    assert _answers(llm) == before


def test_a_classifier_wakes_to_the_same_scores(tmp_path: Path) -> None:
    from tests.encoder_models import make_encoder

    make_encoder(tmp_path / "bert", "BertForSequenceClassification", num_labels=2)
    llm = LLM(str(tmp_path / "bert"))
    prompts = ["the cat sat", "a dog ran far away"]

    def scores() -> list[list[float]]:
        return [result.probs for result in llm.classify(prompts)]

    before = scores()
    llm.engine.sleep(2)
    assert _weights_numel(llm) == 0
    llm.engine.wake_up()
    assert scores() == before


def test_reset_prefix_cache_makes_the_next_prompt_cold(model_dir: Path) -> None:
    llm = LLM(str(model_dir), num_kv_blocks=160, block_size=4)
    _answers(llm)
    hits = llm.engine.stats().prefix_cache_hits
    llm.reset_prefix_cache()
    _answers(llm)
    assert llm.engine.stats().prefix_cache_hits == hits
    _answers(llm)
    assert llm.engine.stats().prefix_cache_hits > hits  # and it caches again
