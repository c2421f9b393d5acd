"""A serving engine reads a trainer's new checkpoint into its model in place (vLLM's disk
weight transfer): it then answers exactly as an engine started on that checkpoint, and a
folder that does not fit is refused with nothing changed."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.llm import LLM
from engine.sampling_params import SamplingParams
from engine.weight_update import copy_weights_in, update_weights_from

from ..training_steps import later_step

PROMPT = [5, 77, 300, 12, 9, 8, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50] * 2
GREEDY = SamplingParams(temperature=0.0, max_tokens=12)


def greedy(llm: LLM) -> list[int]:
    return llm.generate([PROMPT], GREEDY)[0].choices[0].token_ids


@pytest.fixture(scope="module")
def folders(
    make_random_model: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    first = make_random_model("llama")
    return first, later_step(first, tmp_path_factory.mktemp("step") / "step-2", seed=3)


def test_an_updated_engine_answers_as_one_started_on_the_new_checkpoint(
    folders: tuple[Path, Path],
) -> None:
    first, second = folders
    want_second = greedy(LLM(str(second), kv_cache_memory=16 << 20))
    llm = LLM(str(first), kv_cache_memory=16 << 20)
    want_first = greedy(llm)
    assert want_first != want_second  # the step changed the answer
    assert llm.engine.block_manager.cached  # the prompt's blocks are cached
    llm.engine.update_weights(str(second))
    assert not llm.engine.block_manager.cached  # their KV came from the old weights
    assert greedy(llm) == want_second
    llm.engine.update_weights(str(first))
    assert greedy(llm) == want_first


def test_a_folder_that_does_not_fit_is_refused_and_changes_nothing(
    folders: tuple[Path, Path],
    make_random_model: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    first, _ = folders
    llm = LLM(str(first), kv_cache_memory=16 << 20)
    want = greedy(llm)
    other = make_random_model("qwen2")  # another architecture: names differ
    with pytest.raises(ValueError, match="unexpected weight"):
        llm.engine.update_weights(str(other))
    narrower = tmp_path / "narrower"
    shutil.copytree(first, narrower)
    for file in narrower.glob("*.safetensors"):
        tensors = load_file(file)
        name = next(n for n in tensors if n.endswith("lm_head.weight"))
        tensors[name] = tensors[name][:-8].contiguous()
        save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="does not fit the served model"):
        llm.engine.update_weights(str(narrower))
    empty = tmp_path / "empty"
    empty.mkdir()
    for path, match in [
        ("relative/step-2", "absolute"),
        (str(tmp_path / "missing"), "directory"),
        (str(empty), "no safetensors"),
    ]:
        with pytest.raises(ValueError, match=match):
            llm.engine.update_weights(path)
    assert greedy(llm) == want


def test_asleep_weights_are_not_updated_and_a_deep_sleep_keeps_an_update(
    folders: tuple[Path, Path],
) -> None:
    first, second = folders
    want_second = greedy(LLM(str(second), kv_cache_memory=16 << 20))
    llm = LLM(str(first), kv_cache_memory=16 << 20)
    llm.engine.sleep(level=2)
    with pytest.raises(ValueError, match="wake them first"):
        llm.engine.update_weights(str(second))
    llm.engine.wake_up()
    llm.engine.update_weights(str(second))
    llm.engine.sleep(level=2)  # drops the weights: waking reads them again
    llm.engine.wake_up()
    assert greedy(llm) == want_second  # from the update's folder, not --model's


def test_an_update_that_would_not_fit_in_host_memory_is_refused(
    folders: tuple[Path, Path],
) -> None:
    first, second = folders
    llm = LLM(str(first), kv_cache_memory=16 << 20)
    want = greedy(llm)
    model = llm.engine.runner.model
    with pytest.raises(ValueError, match="host memory"):
        update_weights_from(model, str(second), lambda _: model, available=lambda: 1 << 10)
    assert greedy(llm) == want


def test_copying_checks_every_name_shape_and_dtype_before_changing_anything() -> None:
    def model(width: int = 4, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(width, 4), torch.nn.Linear(4, 2)).to(dtype)

    served = model()
    before = {n: p.clone() for n, p in served.named_parameters()}
    for other, match in [
        (torch.nn.Sequential(torch.nn.Linear(4, 4)), "another model"),
        (model(width=3), r"0.weight is \(4, 3\)"),
        (model(dtype=torch.bfloat16), "torch.bfloat16"),
    ]:
        with pytest.raises(ValueError, match=match):
            copy_weights_in(served, other)
        assert all(torch.equal(p, before[n]) for n, p in served.named_parameters())
    fresh = model()
    addresses = [p.data_ptr() for p in served.parameters()]
    assert copy_weights_in(served, fresh) == sum(p.numel() * 4 for p in fresh.parameters())
    assert all(
        torch.equal(a, b) for a, b in zip(served.parameters(), fresh.parameters(), strict=True)
    )
    assert [p.data_ptr() for p in served.parameters()] == addresses  # copied, not swapped
