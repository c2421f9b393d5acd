"""`conveyor bench sleep`: memory freed and seconds taken per level, answers unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.random_model import ModelShape, build_random_model
from benchmarks.sleep_mode import main

TINY = ModelShape(64, 128, 2, 4, 2, tie_word_embeddings=False, max_position_embeddings=512)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, bundled_model_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("bench-sleep-model")
    return build_random_model(folder, TINY, bundled_model_dir, dtype=torch.float32, seed=7)


def test_each_level_reports_memory_and_times_and_the_answers_hold(
    tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sleep.jsonl"
    argv = ["--model", str(tiny_model), "--device", "cpu", "--dtype", "float32"]
    argv += ["--levels", "1,2", "--prompts", "2", "--prompt-len", "8", "--output-len", "4"]
    argv += ["--kv-cache-memory", str(8 << 20), "--json-out", str(out)]
    assert main(argv) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["level"] for line in lines] == [1, 2]
    for line in lines:
        assert line["greedy_matches"] is True
        assert line["sleep_s"] >= 0 and line["wake_s"] >= 0
        assert line["in_use_gib"] > 0 and line["device"] == "cpu"


def test_a_level_other_than_1_or_2_is_refused() -> None:
    with pytest.raises(SystemExit, match="--levels"):
        main(["--levels", "3"])
