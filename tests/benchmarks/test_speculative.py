"""`conveyor bench speculative`: the same greedy requests with and without drafts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.random_model import ModelShape, build_random_model
from benchmarks.speculative import main

TINY = ModelShape(64, 128, 2, 4, 2, tie_word_embeddings=True, max_position_embeddings=512)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, bundled_model_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("bench-speculative-model")
    return build_random_model(folder, TINY, bundled_model_dir, dtype=torch.float32, seed=5)


def test_bench_reports_both_engines_per_workload(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "speculative.jsonl"
    argv = ["--model", str(tiny_model), "--device", "cpu", "--dtype", "float32"]
    argv += ["--concurrency", "1,2", "--output-len", "8", "--rounds", "1", "--json-out", str(out)]
    assert main(argv) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["workload"], r["concurrency"]) for r in lines} == {
        (w, c) for w in ("copy", "code", "free") for c in (1, 2)
    }
    for line in lines:
        assert line["identical"] is True
        assert line["plain_tok_s"] > 0 and line["speculative_tok_s"] > 0
        assert line["speculative_over_plain"] == pytest.approx(
            line["speculative_tok_s"] / line["plain_tok_s"], rel=0.01
        )
