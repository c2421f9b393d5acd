"""FP8 linear benchmark: the Triton FP8 GEMM against bf16 cuBLAS on the same weights.

An FP8 checkpoint's projection (128 x 128 tiles, as released), timed at each
row count from a decode step's few to a prefill chunk's thousand, three ways:

- fp8_gemm: `kernels.triton_fp8_linear`'s GEMM, decoding e4m3 tiles as it
  reads them (forced at every row count);
- fp8_dequant: the matrix dequantized into a scratch copy, then cuBLAS (what
  `fp8_linear` does past kernels/fp8.py's FP8_GEMM_MAX_ROWS);
- bf16: cuBLAS on the dequantized matrix kept in bf16 (the torch path's
  memory: what FP8 saves half of).

Reported per row: microseconds, weight GB/s (the bytes each reads of the
weights: what bounds a decode step) and TFLOP/s; where fp8_gemm stops beating
fp8_dequant is where FP8_GEMM_MAX_ROWS belongs. GPU only: on CPU it refuses
rather than print numbers that mean nothing.

    python -m benchmarks.fp8_linear --rows 1,16,64,256,1024
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.kernels import median_ms, run_gpu_rows
from benchmarks.linear_report import add_shape_args, gemm_up_to, linear_row
from kernels import fp8
from kernels.fp8 import Fp8Block

TILES = Fp8Block(128, 128)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="conveyor bench fp8-linear",
        description="FP8 linear layers: the Triton GEMM vs dequantize + cuBLAS vs bf16 (GPU only).",
    )
    add_shape_args(p)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def bench_row(
    rows: int, shape: tuple[int, int], device: torch.device, peak_gbs: float | None
) -> dict[str, Any]:
    """One JSON row: the three ways on one random matrix and input."""
    from kernels.fp8 import dequantize
    from kernels.triton_fp8_linear import dequantize_fp8, fp8_linear

    out_features, in_features = shape
    gen = torch.Generator(device=device).manual_seed(rows + out_features)
    values = torch.randn(out_features, in_features, generator=gen, device=device) * 8
    values = values.to(torch.float8_e4m3fn).view(torch.uint8)
    scales = torch.rand(*TILES.scales_shape(*shape), generator=gen, device=device) / 400
    x = torch.randn(rows, in_features, generator=gen, device=device, dtype=torch.bfloat16)
    plain = dequantize(values, scales, TILES, torch.bfloat16)

    def gemm() -> None:
        with gemm_up_to(fp8, "FP8_GEMM_MAX_ROWS", rows):
            fp8_linear(x, values, scales, TILES)

    timings = {
        "fp8_gemm": median_ms(gemm, False),
        "fp8_dequant": median_ms(
            lambda: F.linear(x, dequantize_fp8(values, scales, TILES, torch.bfloat16)), False
        ),
        "bf16": median_ms(lambda: F.linear(x, plain), False),
    }
    with gemm_up_to(fp8, "FP8_GEMM_MAX_ROWS", rows):
        error = (fp8_linear(x, values, scales, TILES).float() - F.linear(x, plain).float()).abs()
    weights = out_features * in_features
    # What each reads of the weights: e4m3 bytes and scales; the bf16 copy is written
    # and read back; bf16's two bytes a weight.
    fp8_bytes = weights + scales.numel() * 4
    weight_bytes = {
        "fp8_gemm": fp8_bytes,
        "fp8_dequant": fp8_bytes + 4 * weights,
        "bf16": 2 * weights,
    }
    return linear_row(
        "fp8_linear",
        rows,
        shape,
        timings,
        weight_bytes,
        float(error.max()),
        peak_gbs,
        fp8.FP8_GEMM_MAX_ROWS,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    return run_gpu_rows(
        "benchmarks.fp8_linear times GPU kernels",
        args.json_out,
        lambda device, peak: (
            bench_row(rows, shape, device, peak) for shape in args.shapes for rows in args.rows
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
