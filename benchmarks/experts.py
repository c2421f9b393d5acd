"""Mixture-of-experts benchmark: Triton grouped GEMMs against the torch per-expert loop.

One MoE layer's expert MLPs (Qwen3-30B-A3B's shape by default: 128 experts of
width 768 over hidden 2048, 8 per token), timed on the same routing at several
token counts, from a decode step's few to a prefill's thousands:

- triton: `fused_experts` (device-side sort and padding, two grouped-GEMM
  launches and the activation kernel; no host sync);
- torch: `kernels.experts.experts`, one pair of matmuls per expert hit, with
  one host sync to read the group sizes;
- triton_mxfp4 (with --mxfp4): `fused_experts` on the same weights kept in
  MXFP4 (gpt-oss's release format, decoded tile by tile inside the GEMMs);
  the other two then run on those weights dequantized to bf16;
- triton_int4 (with --int4): the same on 4-bit packed integers in groups of
  128 (GPTQ's and AWQ's MoE releases: kernels/packed_int.py's IntExperts).

Reported per row: milliseconds, TFLOP/s over the work done (2 * tokens * k *
3 * hidden * inter), and the expert weights' bandwidth (the bytes of every
expert hit, read once, in the format each reads: what bounds a decode step). GPU only: on CPU it
refuses rather than print numbers that mean nothing.

    python -m benchmarks.experts --tokens 1,16,256,2048
    python -m benchmarks.experts --experts 32 --top-k 4 --hidden 2880 --inter 2880 --mxfp4
    python -m benchmarks.experts --int4
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.args import int_list
from benchmarks.kernels import median_ms, run_gpu_rows
from benchmarks.report import rounded
from kernels.expert_stack import ExpertStack
from kernels.mxfp4 import VALUES_PER_SCALE, Mxfp4Weight, dequantize
from kernels.packed_int import IntExperts, words_per_row

INT4_GROUP_SIZE = 128


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="conveyor bench experts",
        description="MoE expert MLPs: Triton grouped GEMMs vs the torch loop (GPU only).",
    )
    p.add_argument("--tokens", type=int_list, default=[1, 16, 256, 2048], help="comma-separated")
    p.add_argument("--experts", type=int, default=128)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--inter", type=int, default=768, help="each expert's MLP width")
    p.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    p.add_argument(
        "--mxfp4",
        action="store_true",
        help="also time the Triton GEMMs on MXFP4 weights (gpt-oss's format)",
    )
    p.add_argument(
        "--int4",
        action="store_true",
        help=f"also time them on 4-bit packed integers, groups of {INT4_GROUP_SIZE} (GPTQ, AWQ)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", type=Path, default=None, help="append the JSON lines here")
    args = p.parse_args(argv)
    if not 1 <= args.top_k <= args.experts:
        p.error("--top-k must be between 1 and --experts")
    if args.mxfp4 and args.int4:
        p.error("--mxfp4 and --int4 are separate runs")
    if args.mxfp4 and (args.hidden % VALUES_PER_SCALE or args.inter % VALUES_PER_SCALE):
        p.error(f"--mxfp4 needs --hidden and --inter in multiples of {VALUES_PER_SCALE}")
    return args


def bench_layer(
    tokens: int, args: argparse.Namespace, device: torch.device, peak_gbs: float | None
) -> dict[str, Any]:
    """One JSON row: each implementation on one random routing of `tokens` tokens."""
    from kernels.experts import experts
    from kernels.silu_and_mul import silu_and_mul as torch_silu_and_mul
    from kernels.triton_experts import fused_experts
    from kernels.triton_silu_and_mul import silu_and_mul

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    gen = torch.Generator(device=device).manual_seed(args.seed)
    e, h, i = args.experts, args.hidden, args.inter
    x = torch.randn(tokens, h, generator=gen, device=device, dtype=dtype)
    packed: tuple[ExpertStack, ExpertStack] | None = None
    quantized, quantized_bytes = "", 0.0
    if args.mxfp4:
        mxfp4 = (_random_mxfp4(e, 2 * i, h, gen), _random_mxfp4(e, h, i, gen))
        gate_up, down = (dequantize(w.blocks, w.scales, dtype) for w in mxfp4)
        # Half a byte a value and a byte of scale per 32 values.
        packed, quantized, quantized_bytes = mxfp4, "mxfp4", 0.5 + 1 / VALUES_PER_SCALE
    elif args.int4:
        int4 = (_random_int4(e, 2 * i, h, gen), _random_int4(e, h, i, gen))
        gate_up, down = (torch.stack([w.expert(k, dtype) for k in range(e)]) for w in int4)
        # Half a byte a value, and an fp32 scale and zero per group.
        packed, quantized, quantized_bytes = int4, "int4", 0.5 + 8 / INT4_GROUP_SIZE
    else:
        gate_up = torch.randn(e, 2 * i, h, generator=gen, device=device, dtype=dtype) / h**0.5
        down = torch.randn(e, h, i, generator=gen, device=device, dtype=dtype) / i**0.5
    logits = torch.randn(tokens, e, generator=gen, device=device)
    weights, chosen = torch.topk(logits.softmax(-1), args.top_k, dim=-1)
    weights = (weights / weights.sum(-1, keepdim=True)).to(dtype)
    timings = {
        "triton": median_ms(
            lambda: fused_experts(x, gate_up, down, weights, chosen, silu_and_mul), False
        ),
        "torch": median_ms(
            lambda: experts(x, gate_up, down, weights, chosen, torch_silu_and_mul), False
        ),
    }
    bytes_per_weight = {name: float(x.element_size()) for name in timings}
    if packed is not None:
        timings[f"triton_{quantized}"] = median_ms(
            lambda: fused_experts(x, *packed, weights, chosen, silu_and_mul), False
        )
        bytes_per_weight[f"triton_{quantized}"] = quantized_bytes
    hit = int(torch.unique(chosen).numel())
    flops = 2 * tokens * args.top_k * 3 * h * i
    row: dict[str, Any] = {
        "bench": "experts",
        "tokens": tokens,
        "experts": e,
        "top_k": args.top_k,
        "hidden": h,
        "inter": i,
        "dtype": args.dtype,
        "mxfp4": args.mxfp4,
        "int4": args.int4,
        "experts_hit": hit,
    }
    for name, ms in timings.items():
        row[f"{name}_ms"] = rounded(ms, 4)
        row[f"{name}_tflops"] = rounded(flops / ms / 1e9, 2)
        gbs = hit * 3 * h * i * bytes_per_weight[name] / ms / 1e6
        row[f"{name}_weight_gbs"] = rounded(gbs, 1)
        row[f"{name}_peak_frac"] = rounded(gbs / peak_gbs) if peak_gbs else None
    row["speedup_vs_torch"] = rounded(timings["torch"] / timings["triton"])
    if packed is not None:
        speedup = timings["triton"] / timings[f"triton_{quantized}"]
        row[f"{quantized}_speedup_vs_bf16"] = rounded(speedup)
    return row


def _random_mxfp4(experts: int, rows: int, cols: int, gen: torch.Generator) -> Mxfp4Weight:
    """Random codes under scales 2^-7 ... 2^-5 (weights of a trained model's size)."""
    device = gen.device

    def codes(low: int, high: int, *shape: int) -> torch.Tensor:
        return torch.randint(low, high, shape, generator=gen, device=device, dtype=torch.uint8)

    return Mxfp4Weight(
        codes(0, 256, experts, rows, cols // 2),
        codes(120, 123, experts, rows, cols // VALUES_PER_SCALE),
    )


def _random_int4(experts: int, rows: int, cols: int, gen: torch.Generator) -> IntExperts:
    """Random 4-bit codes (random words are), zeros near the middle of the range and
    scales that keep weights of ordinary magnitudes (~1 / sqrt(cols))."""
    device = gen.device
    words = words_per_row(cols, 4)
    codes = torch.randint(
        -(1 << 31), 1 << 31, (experts, rows, words), generator=gen, device=device, dtype=torch.int64
    ).to(torch.int32)
    count = -(-cols // INT4_GROUP_SIZE)
    zeros = torch.randint(4, 12, (experts, rows, count), generator=gen, device=device).float()
    scales = torch.rand(experts, rows, count, generator=gen, device=device) + 0.5
    groups = (torch.arange(cols, device=device) // INT4_GROUP_SIZE).to(torch.int32)
    return IntExperts(
        codes, scales / (15 * cols**0.5), zeros, groups.expand(experts, -1), 4, INT4_GROUP_SIZE
    )


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    return run_gpu_rows(
        "benchmarks.experts times GPU kernels",
        args.json_out,
        lambda device, peak: (bench_layer(tokens, args, device, peak) for tokens in args.tokens),
    )


if __name__ == "__main__":
    raise SystemExit(main())
