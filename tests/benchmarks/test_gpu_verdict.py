"""The kernels issue's GPU targets read from a gpu-check results folder: met, missed, or
not measured, each from the file its stage writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.gpu_verdict import MET, MISSED, NOT_MEASURED, main, verdict

JUNIT = (
    '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" '
    'errors="0" failures="{failures}" skipped="1" tests="120" time="80.0"/></testsuites>'
)


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _decode_row(
    batch: int, context: int, gbs: float, partitions: int, kv: str = "bfloat16"
) -> dict[str, Any]:
    return {
        "bench": "kernels",
        "kernel": "decode_attention",
        "batch": batch,
        "context": context,
        "kv_cache_dtype": kv,
        "partitions": partitions,
        "triton_gbs": gbs,
        "triton_peak_frac": round(gbs / 4800.0, 3),
        "sdpa_gbs": 900.0,
        "speedup_vs_sdpa": round(gbs / 900.0, 2),
        "peak_gbs": 4800.0,
    }


def _engine(device: str, tok_s: dict[int, float], **summary: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {"bench": "engine", "system": "conveyor", "concurrency": c, "output_tok_s": t}
        for c, t in tok_s.items()
    ]
    rows.append({"bench": "engine", "system": "summary", "device": device, **summary})
    return rows


def _gpu_run(out: Path, decode_gbs: float = 3400.0, vs_hf: float = 7.5) -> None:
    """A folder as a whole gpu-check run on an H200 leaves it."""
    (out / "summary.txt").write_text("env rc=0 3s\nkernel-tests rc=0 70s\n")
    (out / "kernel-tests.xml").write_text(JUNIT.format(failures=0))
    _write(
        out / "kernels.jsonl",
        [
            _decode_row(1, 512, 40.0, 1),
            _decode_row(128, 4096, 2600.0, 8),  # the default partition size
            _decode_row(128, 4096, decode_gbs, 16),  # another, from the p256 stage
            # Over an FP8 cache: in the table, not the target's figure.
            _decode_row(128, 4096, 3900.0, 8, kv="float8_e4m3fn"),
        ],
    )
    _write(
        out / "engine-bf16.jsonl",
        _engine(
            "cuda",
            {1: 150.0, 256: 9000.0},
            dtype="bfloat16",
            hf_best_batch=256,
            single_stream_vs_hf=4.1,
            aggregate256_vs_hf_best=vs_hf,
        ),
    )
    _write(out / "engine-bf16-eager.jsonl", _engine("cuda", {1: 50.0, 256: 6000.0}))
    _write(out / "engine-fp8.jsonl", _engine("cuda", {1: 210.0, 256: 10800.0}))
    _write(
        out / "engine-fp32.jsonl",
        _engine("cuda", {1: 80.0}, greedy_tokens_matching_hf=64, greedy_tokens_compared=64),
    )
    fp8 = {"out_features": 6144, "in_features": 4096, "rows": 1, "fp8_gemm_us": 12.0}
    fp8 |= {"fp8_gemm_weight_gbs": 2100.0, "fp8_dequant_us": 40.0, "fp8_dequant_weight_gbs": 3000.0}
    _write(
        out / "fp8-linear.jsonl",
        [fp8 | {"bf16_us": 20.0, "bf16_weight_gbs": 2500.0, "gemm_vs_bf16": 1.67}],
    )
    expert = {"experts": 32, "hidden": 2880, "inter": 2880, "top_k": 4, "tokens": 1}
    _write(
        out / "experts.jsonl",
        [
            {**expert, "triton_ms": 0.2, "triton_weight_gbs": 2000.0, "torch_ms": 1.0}
            | {"torch_weight_gbs": 400.0, "triton_mxfp4_ms": 0.08}
            | {"triton_mxfp4_weight_gbs": 1300.0, "mxfp4_speedup_vs_bf16": 2.5},
            {**expert, "experts": 128, "triton_ms": 0.3, "triton_weight_gbs": 1500.0}
            | {"torch_ms": 1.2, "torch_weight_gbs": 380.0, "triton_int4_ms": 0.12}
            | {"triton_int4_weight_gbs": 1100.0, "int4_speedup_vs_bf16": 2.5},
            {**expert, "triton_ms": 0.2, "triton_weight_gbs": 2000.0, "torch_ms": 1.0}
            | {"torch_weight_gbs": 400.0},
        ],
    )


def test_a_run_that_meets_every_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _gpu_run(tmp_path)
    assert main([str(tmp_path)]) == 0
    report = (tmp_path / "verdict.md").read_text()
    assert capsys.readouterr().out == report
    targets, _ = verdict(tmp_path)
    assert [t.outcome for t in targets] == [MET] * 4
    # The best partition size counts; the figures are in the report.
    assert "3400.0 GB/s over 16 partitions (best of 2 runs)" in report
    assert "71% of 4800.0 GB/s" in report
    assert "| 128 | 4096 | float8_e4m3fn | 8 | 3900.0 | 0.812 | 900.0 | 4.33x |" in report
    assert "7.5x at 256 concurrent vs HF batch 256" in report
    assert "64 of 64 tokens on cuda" in report
    assert "| 256 | 9000.0 | 6000.0 | 1.50x |" in report  # graphs vs eager
    assert "| 256 | 10800.0 | 9000.0 | 1.20x |" in report  # --quantization fp8 vs bf16
    assert "| 6144x4096 | 1 | 12.0 (2100.0) | 40.0 (3000.0) | 20.0 (2500.0) | 1.67x |" in report
    assert (
        "| 32x2880x2880 top-4 | 1 | 0.2 (2000.0) | 1.0 (400.0) | MXFP4 0.08 (1300.0) | 2.5 |"
        in report
    )
    assert (
        "| 128x2880x2880 top-4 | 1 | 0.3 (1500.0) | 1.2 (380.0) | INT4 0.12 (1100.0) | 2.5 |"
        in report
    )
    assert "| 32x2880x2880 top-4 | 1 | 0.2 (2000.0) | 1.0 (400.0) | - | - |" in report


def test_missed_targets_say_by_how_much(tmp_path: Path) -> None:
    _gpu_run(tmp_path, decode_gbs=2000.0, vs_hf=3.2)
    (tmp_path / "kernel-tests.xml").write_text(JUNIT.format(failures=2))
    targets, report = verdict(tmp_path)
    assert [t.outcome for t in targets[:3]] == [MISSED] * 3
    assert "2 failed" in report and "54% of 4800.0 GB/s" in report and "3.2x" in report
    assert main([str(tmp_path)]) == 1


def test_a_cpu_or_cut_short_run_is_not_measured(tmp_path: Path) -> None:
    """A smoke run on CPU leaves engine summaries that are not GPU figures; a stage that
    never ran leaves no file."""
    _write(
        tmp_path / "engine-fp32.jsonl",
        _engine("cpu", {1: 5.0}, greedy_tokens_matching_hf=3, greedy_tokens_compared=3),
    )
    _write(tmp_path / "engine-bf16.jsonl", _engine("cpu", {1: 5.0}, aggregate2_vs_hf_best=1.2))
    targets, report = verdict(tmp_path)
    assert [t.outcome for t in targets] == [NOT_MEASURED] * 4
    assert "3 of 3 tokens on cpu (not a GPU)" in report
    assert main([str(tmp_path)]) == 3
    assert main([str(tmp_path / "missing")]) == 2


def test_a_smoke_run_meets_nothing_but_can_miss(tmp_path: Path) -> None:
    _gpu_run(tmp_path)
    targets, _ = verdict(tmp_path, on_gpu=False)
    assert [t.outcome for t in targets] == [NOT_MEASURED] * 4
    assert targets[0].detail.endswith("(a smoke run on CPU)")
    (tmp_path / "kernel-tests.xml").write_text(JUNIT.format(failures=1))
    assert verdict(tmp_path, on_gpu=False)[0][0].outcome == MISSED
    assert main([str(tmp_path), "--device", "cpu"]) == 1
