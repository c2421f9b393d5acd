"""`conveyor bench embed`: our pooling runner and HF on the same prompts, side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.embeddings import main
from benchmarks.random_model import ModelShape, build_random_model

TINY = ModelShape(64, 128, 2, 4, 2, tie_word_embeddings=False, max_position_embeddings=512)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, bundled_model_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("bench-embed-model")
    return build_random_model(folder, TINY, bundled_model_dir, dtype=torch.float32, seed=7)


def test_bench_reports_both_sides_and_their_vectors_agree(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "embed.jsonl"
    argv = ["--model", str(tiny_model), "--device", "cpu", "--dtype", "float32"]
    argv += ["--prompt-len", "8,24", "--num-prompts", "5", "--hf-batch", "2", "--rounds", "1"]
    assert main([*argv, "--json-out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["prompt_len"] for line in lines] == [8, 24]
    for line in lines:
        assert line["ours_tok_s"] > 0 and line["hf_tok_s"] > 0
        ratio = line["ours_tok_s"] / line["hf_tok_s"]
        assert line["ours_over_hf"] == pytest.approx(ratio, rel=0.01)
        # The same vectors on both sides: the bench measures equal work.
        assert line["max_abs_diff"] < 1e-5


def test_bench_compares_a_classifiers_probabilities(
    tmp_path: Path, bundled_model_dir: Path
) -> None:
    folder = build_random_model(
        tmp_path / "classifier", TINY, bundled_model_dir, dtype=torch.float32, num_labels=3
    )
    out = tmp_path / "classify.jsonl"
    argv = ["--model", str(folder), "--device", "cpu", "--dtype", "float32"]
    argv += ["--prompt-len", "8", "--num-prompts", "4", "--hf-batch", "2", "--rounds", "1"]
    assert main([*argv, "--json-out", str(out)]) == 0
    (line,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert line["bench"] == "classify" and line["ours_tok_s"] > 0 and line["hf_tok_s"] > 0
    assert line["max_abs_diff"] < 1e-5
