"""`conveyor bench structured`: free and constrained runs side by side, with their ratio."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.random_model import ModelShape, build_random_model
from benchmarks.structured_output import main

TINY = ModelShape(64, 128, 2, 4, 2, tie_word_embeddings=True, max_position_embeddings=256)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, bundled_model_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("bench-structured-model")
    return build_random_model(folder, TINY, bundled_model_dir, dtype=torch.float32, seed=5)


def test_bench_reports_both_modes_and_the_mask_time(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "structured.jsonl"
    argv = ["--model", str(tiny_model), "--device", "cpu", "--dtype", "float32"]
    argv += ["--concurrency", "1,3", "--output-len", "8", "--rounds", "1", "--json-out", str(out)]
    assert main(argv) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    runs = {(r["mode"], r["concurrency"]): r for r in lines if "mode" in r}
    assert set(runs) == {(m, c) for m in ("free", "json_schema") for c in (1, 3)}
    for (mode, _), run in runs.items():
        assert run["output_tok_s"] > 0 and run["full_batch_decode_step_ms"] > 0
        assert (run["mask_ms_per_step"] > 0) == (mode == "json_schema")
    ratios = [r for r in lines if "constrained_over_free_step" in r]
    assert [r["concurrency"] for r in ratios] == [1, 3]
