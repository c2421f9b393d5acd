"""`conveyor bench lora`: the same requests on the base model, one adapter and a mix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.lora import loras_for, main
from benchmarks.random_model import ModelShape, build_random_model

TINY = ModelShape(64, 128, 2, 4, 2, tie_word_embeddings=False, max_position_embeddings=512)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, bundled_model_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("bench-lora-model")
    return build_random_model(folder, TINY, bundled_model_dir, dtype=torch.float32, seed=6)


def test_modes_spread_requests_over_adapters() -> None:
    assert loras_for("base", 3, 2) == [None, None, None]
    assert loras_for("one", 3, 2) == ["lora-0"] * 3
    assert loras_for("mixed", 5, 2) == ["lora-0", "lora-1", "lora-0", "lora-1", "lora-0"]


def test_bench_reports_every_mode_per_concurrency(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "lora.jsonl"
    argv = ["--model", str(tiny_model), "--device", "cpu", "--dtype", "float32"]
    argv += ["--concurrency", "1,3", "--num-adapters", "2", "--rank", "4"]
    argv += ["--prompt-len", "8", "--output-len", "4", "--rounds", "1", "--json-out", str(out)]
    assert main(argv) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["concurrency"] for line in lines] == [1, 3]
    for line in lines:
        assert line["base_tok_s"] > 0 and line["one_tok_s"] > 0 and line["mixed_tok_s"] > 0
        assert line["mixed_over_base"] == pytest.approx(
            line["mixed_tok_s"] / line["base_tok_s"], rel=0.01
        )
        assert (line["num_adapters"], line["rank"], line["device"]) == (2, 4, "cpu")
