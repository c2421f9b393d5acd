"""One JSON row of a quantized linear benchmark (benchmarks/fp8_linear.py,
benchmarks/int_linear.py): the same three ways timed on one matrix, side by side."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.args import int_list
from benchmarks.report import rounded

# Llama-3-8B's fused q/k/v, fused gate/up and down projections: (out, in).
DEFAULT_SHAPES = ((6144, 4096), (28672, 4096), (4096, 14336))


def shape_list(text: str) -> list[tuple[int, int]]:
    """ "6144x4096,4096x14336" -> [(out, in), ...]."""
    shapes = []
    for item in text.split(","):
        out_features, _, in_features = item.partition("x")
        shapes.append((int(out_features), int(in_features)))
    return shapes


def add_shape_args(parser: argparse.ArgumentParser) -> None:
    """--rows, --shapes and --json-out, as every linear benchmark takes them."""
    parser.add_argument(
        "--rows", type=int_list, default=[1, 16, 64, 256, 1024], help="comma-separated"
    )
    parser.add_argument(
        "--shapes",
        type=shape_list,
        default=list(DEFAULT_SHAPES),
        help="comma-separated OUTxIN (default: Llama-3-8B's q/k/v, gate/up and down)",
    )
    parser.add_argument("--json-out", type=Path, default=None, help="append the JSON lines here")


def linear_row(
    bench: str,
    rows: int,
    shape: tuple[int, int],
    timings: dict[str, float],
    weight_bytes: dict[str, int],
    max_abs_err: float,
    peak_gbs: float | None,
    gemm_max_rows: int,
) -> dict[str, Any]:
    """`timings` (ms) of the quantized GEMM, its dequantize + cuBLAS fallback and bf16
    cuBLAS, keyed "<x>_gemm", "<x>_dequant" and "bf16", in that order; `weight_bytes`:
    what each reads of the weights. Per way: microseconds, weight GB/s (and as a
    fraction of `peak_gbs`) and TFLOP/s; then the GEMM's speed-ups over the other two."""
    out_features, in_features = shape
    row: dict[str, Any] = {
        "bench": bench,
        "rows": rows,
        "out_features": out_features,
        "in_features": in_features,
        "max_abs_err_vs_bf16": float(f"{max_abs_err:.3g}"),
        "engine_gemm_max_rows": gemm_max_rows,
    }
    flops = 2 * rows * out_features * in_features
    for name, ms in timings.items():
        gbs = weight_bytes[name] / ms / 1e6
        row[f"{name}_us"] = rounded(ms * 1e3, 2)
        row[f"{name}_weight_gbs"] = rounded(gbs, 1)
        row[f"{name}_peak_frac"] = rounded(gbs / peak_gbs) if peak_gbs else None
        row[f"{name}_tflops"] = rounded(flops / ms / 1e9, 2)
    gemm, dequant, bf16 = timings.values()
    row["gemm_vs_bf16"] = rounded(bf16 / gemm)
    row["gemm_vs_dequant"] = rounded(dequant / gemm)
    return row


@contextmanager
def gemm_up_to(module: ModuleType, limit_name: str, rows: int) -> Iterator[None]:
    """The launcher takes its GEMM path up to `rows` rows while inside (its limit,
    `module.<limit_name>`, raised that far), so the GEMM is timed past its limit too."""
    limit = getattr(module, limit_name)
    setattr(module, limit_name, max(rows, limit))
    try:
        yield
    finally:
        setattr(module, limit_name, limit)
