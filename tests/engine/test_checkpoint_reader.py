"""Which weight files a model folder is read from, safetensors or PyTorch pickles."""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.checkpoint_reader import checkpoint_files, read_tensors
from engine.llm import LLM, greedy

PROMPTS = [[5, 17, 300, 9, 41], [7, 7, 100]]


def test_only_the_transformers_format_weights_are_read(tmp_path: Path) -> None:
    """A Mistral repo also ships `consolidated.safetensors` (the same weights in
    Mistral's names): the index says which files hold the model, or else every
    safetensors file but that one."""
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        save_file({"x": torch.zeros(1)}, str(tmp_path / name))
    consolidated = str(tmp_path / "consolidated.safetensors")
    save_file({"layers.0.attention.wq.weight": torch.zeros(1)}, consolidated)
    names = [f.name for f in checkpoint_files(tmp_path)]
    assert names == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00002-of-00002.safetensors"}})
    )
    assert [f.name for f in checkpoint_files(tmp_path)] == ["model-00002-of-00002.safetensors"]
    with pytest.raises(FileNotFoundError, match=r"no \.safetensors"):
        checkpoint_files(tmp_path / "missing")


def test_safetensors_win_over_pickles_and_pickles_are_the_fallback(tmp_path: Path) -> None:
    torch.save({"x": torch.ones(2)}, tmp_path / "pytorch_model.bin")
    torch.save({"step": torch.zeros(1)}, tmp_path / "training_args.bin")  # not weights
    assert [f.name for f in checkpoint_files(tmp_path)] == ["pytorch_model.bin"]
    save_file({"x": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    assert [f.name for f in checkpoint_files(tmp_path)] == ["model.safetensors"]


def test_sharded_and_legacy_format_pickles_are_read(tmp_path: Path) -> None:
    torch.save({"a": torch.arange(3.0)}, tmp_path / "pytorch_model-00001-of-00002.bin")
    # torch's pre-1.6 format cannot be memory-mapped: it is read whole instead.
    torch.save(
        {"b": torch.full((2,), 7.0), "c": torch.zeros(1)},
        tmp_path / "pytorch_model-00002-of-00002.bin",
        _use_new_zipfile_serialization=False,
    )
    (tmp_path / "pytorch_model.bin.index.json").write_text(
        json.dumps(
            {
                "weight_map": {
                    "a": "pytorch_model-00001-of-00002.bin",
                    "b": "pytorch_model-00002-of-00002.bin",
                    "c": "pytorch_model-00002-of-00002.bin",
                }
            }
        )
    )
    files = checkpoint_files(tmp_path)
    read = dict(read_tensors(files, lambda name: name != "c"))
    assert sorted(read) == ["a", "b"]
    torch.testing.assert_close(read["b"], torch.full((2,), 7.0))


class _RunsCode:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("a pickle ran code",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    torch.save({"x": torch.zeros(1), "evil": _RunsCode()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        dict(read_tensors(checkpoint_files(tmp_path)))


def test_a_pickled_checkpoint_generates_what_its_safetensors_twin_does(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """Many older hub models ship only `pytorch_model.bin`: served like safetensors."""
    original = make_random_model("llama")
    pickled = tmp_path / "pickled"
    shutil.copytree(original, pickled)
    weights = pickled / "model.safetensors"
    torch.save(load_file(str(weights)), pickled / "pytorch_model.bin")
    weights.unlink()
    params = greedy(8, ignore_eos=True)
    expected = LLM(str(original), num_kv_blocks=32).generate(PROMPTS, params)
    got = LLM(str(pickled), num_kv_blocks=32).generate(PROMPTS, params)
    assert [r.token_ids for r in got] == [r.token_ids for r in expected]
