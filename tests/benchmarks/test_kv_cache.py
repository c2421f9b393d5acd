"""`conveyor bench kv-cache`: cache dtypes side by side: capacity, speed, agreement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.kv_cache import main
from benchmarks.random_model import ModelShape, build_random_model

TINY = ModelShape(64, 128, 2, 4, 2, tie_word_embeddings=True, max_position_embeddings=512)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, bundled_model_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("bench-kv-cache-model")
    return build_random_model(folder, TINY, bundled_model_dir, dtype=torch.float32, seed=5)


def test_bench_reports_every_cache_dtype_against_auto(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "kv.jsonl"
    argv = ["--model", str(tiny_model), "--device", "cpu", "--dtype", "float32"]
    argv += ["--kv-cache-memory", str(4 << 20), "--max-model-len", "256"]
    argv += ["--concurrency", "1,3", "--output-len", "6"]
    argv += ["--rounds", "1", "--json-out", str(out)]
    assert main(argv) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    by_key = {(r["kv_cache_dtype"], r["concurrency"]): r for r in lines}
    assert set(by_key) == {(d, c) for d in ("auto", "fp8", "fp8_e5m2") for c in (1, 3)}
    for (dtype, _), line in by_key.items():
        # fp32 on CPU: a byte per value holds four times the tokens in the same memory.
        assert line["kv_tokens_vs_auto"] == (1.0 if dtype == "auto" else 4.0)
        assert line["output_tok_s"] > 0
        assert 0.0 <= line["greedy_prefix_vs_auto"] <= 1.0
    assert by_key[("auto", 3)]["greedy_prefix_vs_auto"] == 1.0
    assert by_key[("auto", 3)]["greedy_identical_vs_auto"] == 1.0
    assert by_key[("auto", 3)]["tok_s_vs_auto"] == 1.0


def test_auto_must_come_first() -> None:
    with pytest.raises(SystemExit):
        main(["--kv-cache-dtypes", "fp8,auto"])
