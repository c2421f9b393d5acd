"""`conveyor bench beam`: our beam search and HF's on the same prompts, side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.beam_search import main
from benchmarks.random_model import ModelShape, build_random_model

TINY = ModelShape(64, 128, 2, 4, 2, tie_word_embeddings=False, max_position_embeddings=512)


def test_bench_reports_both_sides_and_the_same_hypotheses(
    tmp_path: Path, bundled_model_dir: Path
) -> None:
    folder = build_random_model(tmp_path / "model", TINY, bundled_model_dir, dtype=torch.float32)
    out = tmp_path / "beam.jsonl"
    argv = ["--model", str(folder), "--device", "cpu", "--dtype", "float32", "--width", "1,3"]
    argv += ["--prompt-len", "8", "--output-len", "5", "--num-prompts", "3", "--hf-batch", "2"]
    assert main([*argv, "--rounds", "1", "--json-out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["width"] for line in lines] == [1, 3]
    for line in lines:
        assert line["ours_tok_s"] > 0 and line["hf_tok_s"] > 0
        ratio = line["ours_tok_s"] / line["hf_tok_s"]
        assert line["ours_over_hf"] == pytest.approx(ratio, rel=0.01)
        # The same hypotheses on both sides: the bench measures equal work.
        assert line["prompts_matching_hf"] == 3
