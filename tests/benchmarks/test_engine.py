"""`conveyor bench engine` on a model folder: both systems timed, greedy tokens agreeing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.engine import main, matching_prefix
from benchmarks.random_model import ModelShape, build_random_model

TINY = ModelShape(64, 128, 2, 4, 2, tie_word_embeddings=True, max_position_embeddings=256)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, bundled_model_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("bench-model")
    return build_random_model(folder, TINY, bundled_model_dir, dtype=torch.float32, seed=5)


def test_matching_prefix() -> None:
    assert matching_prefix([1, 2, 3], [1, 2, 3]) == 3
    assert matching_prefix([1, 2, 3], [1, 9, 3]) == 1
    assert matching_prefix([], [1]) == 0
    assert matching_prefix([4, 5], [4, 5, 6]) == 2


@pytest.mark.slow  # ~6 s: HF generate, our engine and the machine probes
def test_bench_on_a_model_folder(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "engine.jsonl"
    argv = ["--model", str(tiny_model), "--device", "cpu", "--dtype", "float32"]
    argv += ["--prompt-len", "16", "--output-len", "8", "--concurrency", "1,3"]
    argv += ["--hf-batches", "2", "--probe-seconds", "0", "--json-out", str(out)]
    assert main(argv) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    hf = sorted(r["batch"] for r in lines if r["system"] == "hf")
    ours = sorted(r["concurrency"] for r in lines if r["system"] == "conveyor")
    assert hf == [1, 2] and ours == [1, 3]
    for row in lines[:-1]:
        assert row["output_tokens"] == row.get("batch", row.get("concurrency")) * 8
    summary = lines[-1]
    assert summary["system"] == "summary" and summary["dtype"] == "float32"
    # fp32, the same weights and prompt: every greedy token agrees with HF's.
    assert summary["greedy_tokens_compared"] == 8
    assert summary["greedy_tokens_matching_hf"] == 8
    assert summary["single_stream_vs_hf"] > 0 and summary["aggregate3_vs_hf_best"] > 0
    # The probes ran their minimum (a warm-up and three timed reps) and measured something.
    assert summary["gemm_gflops_decode_shape"] > 0 and summary["mem_bw_gbs"] > 0
