"""`conveyor bench weights`: seconds per update and bytes copied, answers as the folder's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.random_model import ModelShape, build_random_model
from benchmarks.weight_update import main

from ..training_steps import later_step

TINY = ModelShape(64, 128, 2, 4, 2, tie_word_embeddings=False, max_position_embeddings=512)
ARGS = ["--device", "cpu", "--dtype", "float32", "--prompts", "2", "--prompt-len", "8"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, bundled_model_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("bench-weights-model")
    return build_random_model(folder, TINY, bundled_model_dir, dtype=torch.float32, seed=7)


@pytest.mark.parametrize("later", [False, True])
def test_it_reports_seconds_and_bytes_and_the_answers_hold(
    tiny_model: Path, tmp_path: Path, later: bool
) -> None:
    out = tmp_path / "weights.jsonl"
    argv = ["--model", str(tiny_model), *ARGS, "--repeats", "2", "--json-out", str(out)]
    argv += ["--kv-cache-memory", str(8 << 20), "--output-len", "4"]
    if later:
        argv += ["--path", str(later_step(tiny_model, tmp_path / "step-2", seed=1))]
    assert main(argv) == 0
    (line,) = [json.loads(text) for text in out.read_text().splitlines()]
    assert line["bench"] == "weights" and line["own_folder"] is not later
    assert line["greedy_matches"] is True and len(line["update_s"]) == 2
    assert line["weights_gib"] > 0 and line["gib_per_s"] > 0


def test_no_repeats_is_refused() -> None:
    with pytest.raises(SystemExit, match="--repeats"):
        main(["--repeats", "0"])
