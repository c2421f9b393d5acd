"""Packed-integer linear benchmark: the Triton W4A16 GEMM against bf16 cuBLAS on the
same weights.

A GPTQ/AWQ/W4A16 checkpoint's projection (4-bit codes, a scale and zero per 128
input columns, as the releases use; `--bits 8` for GPTQ's 8-bit ones), timed
at each row count from a decode step's few to a prefill chunk's thousand,
three ways:

- int_gemm: `kernels.triton_int_linear`'s GEMM, decoding codes as it reads
  them (forced at every row count);
- int_dequant: the matrix dequantized into a scratch copy, then cuBLAS (what
  `int_linear` does past kernels/packed_int.py's INT_GEMM_MAX_ROWS);
- bf16: cuBLAS on the dequantized matrix kept in bf16 (the torch path's
  memory).

Reported per row: microseconds, weight GB/s (the bytes each reads of the
weights: what bounds a decode step) and TFLOP/s; where int_gemm stops beating
int_dequant is where INT_GEMM_MAX_ROWS belongs. `--act-order` shuffles which
columns share a group, as act-order GPTQ releases do. GPU only: on CPU it
refuses rather than print numbers that mean nothing.

    python -m benchmarks.int_linear --rows 1,16,64,256,1024
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.kernels import median_ms, run_gpu_rows
from benchmarks.linear_report import add_shape_args, gemm_up_to, linear_row
from kernels import packed_int
from kernels.packed_int import PackedInt, pack_codes

GROUP_SIZE = 128


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="conveyor bench int-linear",
        description="Packed-integer linear layers: the Triton GEMM vs dequantize + cuBLAS vs "
        "bf16 (GPU only).",
    )
    add_shape_args(p)
    p.add_argument("--bits", type=int, choices=(2, 4, 8), default=4)
    p.add_argument("--act-order", action="store_true", help="shuffled groups (GPTQ act-order)")
    return p.parse_args(argv)


def random_packed(
    shape: tuple[int, int],
    bits: int,
    act_order: bool,
    device: torch.device,
    seed: int,
    group_size: int = GROUP_SIZE,
) -> PackedInt:
    """Random codes, zeros near the middle of the range, and scales that keep weights of
    ordinary magnitudes (~1 / sqrt(in)), on `device`; act-order shuffles which columns
    share a group."""
    out_features, in_features = shape
    gen = torch.Generator().manual_seed(seed)
    top = (1 << bits) - 1
    codes = torch.randint(0, top + 1, shape, generator=gen)
    order = torch.randperm(in_features, generator=gen) if act_order else torch.arange(in_features)
    groups = (order // group_size).to(torch.int32)
    count = -(-in_features // group_size)
    zeros = torch.randint(top // 4, 3 * top // 4 + 1, (out_features, count), generator=gen)
    scales = (0.5 + torch.rand(out_features, count, generator=gen)) / (top * in_features**0.5)
    tensors = (pack_codes(codes, bits), scales, zeros.float(), groups)
    return PackedInt(*(t.to(device) for t in tensors), bits, 0 if act_order else group_size)


def bench_row(
    rows: int,
    shape: tuple[int, int],
    bits: int,
    act_order: bool,
    device: torch.device,
    peak_gbs: float | None,
) -> dict[str, Any]:
    """One JSON row: the three ways on one random matrix and input."""
    from kernels.triton_int_linear import dequantize_int, int_linear

    weight = random_packed(shape, bits, act_order, device, rows + shape[0])
    out_features, in_features = shape
    gen = torch.Generator(device=device).manual_seed(rows)
    x = torch.randn(rows, in_features, generator=gen, device=device, dtype=torch.bfloat16)
    plain = packed_int.dequantize(weight, torch.bfloat16)

    def gemm() -> None:
        with gemm_up_to(packed_int, "INT_GEMM_MAX_ROWS", rows):
            int_linear(x, weight)

    timings = {
        "int_gemm": median_ms(gemm, False),
        "int_dequant": median_ms(
            lambda: F.linear(x, dequantize_int(weight, torch.bfloat16)), False
        ),
        "bf16": median_ms(lambda: F.linear(x, plain), False),
    }
    with gemm_up_to(packed_int, "INT_GEMM_MAX_ROWS", rows):
        error = (int_linear(x, weight).float() - F.linear(x, plain).float()).abs()
    weights = out_features * in_features
    # What each reads of the weights: the codes' words, and a scale and zero (fp32) per
    # group; the bf16 copy is written and read back; bf16's two bytes a weight.
    packed_bytes = weight.codes.numel() * 4 + 2 * weight.scales.numel() * 4 + in_features * 4
    weight_bytes = {
        "int_gemm": packed_bytes,
        "int_dequant": packed_bytes + 4 * weights,
        "bf16": 2 * weights,
    }
    row = linear_row(
        "int_linear",
        rows,
        shape,
        timings,
        weight_bytes,
        float(error.max()),
        peak_gbs,
        packed_int.INT_GEMM_MAX_ROWS,
    )
    return {**row, "bits": bits, "act_order": act_order}


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    return run_gpu_rows(
        "benchmarks.int_linear times GPU kernels",
        args.json_out,
        lambda device, peak: (
            bench_row(rows, shape, args.bits, args.act_order, device, peak)
            for shape in args.shapes
            for rows in args.rows
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
