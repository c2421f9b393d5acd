"""Kernel benchmark: Triton paged decode attention against torch SDPA, as memory bandwidth.

Decode attention reads every cached K and V once per token and does little
arithmetic on them, so its ceiling is the GPU's memory bandwidth: the number
that matters is achieved GB/s and its fraction of the card's peak. For each
(batch, context) this times, on the same paged cache:

- triton: `decode_attention` (split-K over partitions, plus the combine kernel)
  reading K/V through block tables;
- sdpa: torch `scaled_dot_product_attention` over K/V already gathered into
  dense [batch, kv_heads, context, head_dim] tensors (no paging cost at all);
- gather_sdpa: the torch backend's path on a GPU, the gather plus that SDPA.

Bandwidth counts the bytes attention must touch (K, V, queries, outputs,
block tables), whatever each implementation moves besides. With
`--kv-cache-dtype fp8` the Triton kernel reads an FP8 cache (a byte per
value, so half the bytes at bf16) and the SDPA rows read the same values
dequantized in the model's dtype, as they would serve without FP8: each
row's GB/s counts its own bytes, and the speedups are the time saved. Peak comes from
`--peak-gbs` or a table of known GPUs. GPU only: on CPU it refuses rather
than print numbers that mean nothing.

    python -m benchmarks.kernels --batch 1,32,128 --context 512,4096
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.args import int_list
from benchmarks.report import JsonLines, rounded

# Peak DRAM bandwidth from vendor spec sheets, GB/s; first substring match of the
# device name wins, so more specific names come first.
KNOWN_PEAK_GBS: tuple[tuple[str, float], ...] = (
    ("H200", 4800.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),
    ("L40S", 864.0),
    ("L4", 300.0),
    ("A10G", 600.0),
    ("A10", 600.0),
    ("RTX 4090", 1008.0),
    ("RTX 3090", 936.0),
    ("T4", 320.0),
    ("V100", 900.0),
)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="conveyor bench kernels",
        description="Paged decode attention bandwidth: Triton kernel vs torch SDPA (GPU only).",
    )
    p.add_argument("--batch", type=int_list, default=[1, 32, 128], help="comma-separated")
    p.add_argument("--context", type=int_list, default=[512, 4096], help="comma-separated")
    p.add_argument("--heads", type=int, default=32, help="query heads (Llama-3-8B: 32)")
    p.add_argument("--kv-heads", type=int, default=8, help="KV heads (Llama-3-8B: 8)")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--block-size", type=int, default=16, help="KV cache block size")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16")
    p.add_argument("--partition-size", type=int, default=None, help="split-K partition tokens")
    p.add_argument(
        "--kv-cache-dtype",
        choices=["auto", "fp8", "fp8_e4m3", "fp8_e5m2"],
        default="auto",
        help="the cache the Triton kernel reads (fp8: a byte per key and value)",
    )
    p.add_argument("--peak-gbs", type=float, default=None, help="the GPU's peak GB/s")
    p.add_argument("--cuda-graph", action="store_true", help="time CUDA-graph replays")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", type=Path, default=None, help="append the JSON lines here")
    args = p.parse_args(argv)
    if args.heads % args.kv_heads:
        p.error("--heads must be a multiple of --kv-heads")
    return args


def known_peak_gbs(device_name: str) -> float | None:
    for key, gbs in KNOWN_PEAK_GBS:
        if key in device_name:
            return gbs
    return None


def cuda_or_refuse(what: str) -> torch.device | None:
    """The GPU a GPU-only benchmark measures; None, having said so on stderr, where there
    is none (numbers from a CPU would mean nothing). `what`: the benchmark and what it
    measures, for the message."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    print(
        f"{what} and needs a CUDA GPU; none is visible here, so nothing was measured",
        file=sys.stderr,
    )
    return None


def run_gpu_rows(
    what: str,
    json_out: Path | None,
    rows: Callable[[torch.device, float | None], Iterator[dict[str, Any]]],
) -> int:
    """A GPU-only benchmark's main: `rows(device, peak GB/s)` measured and emitted one by
    one, each naming the GPU; 2, measuring nothing, without one (see cuda_or_refuse)."""
    device = cuda_or_refuse(what)
    if device is None:
        return 2
    name = torch.cuda.get_device_name(device)
    emit = JsonLines(json_out)
    with torch.inference_mode():
        for row in rows(device, known_peak_gbs(name)):
            row["device"] = name
            emit(row)
            torch.cuda.empty_cache()
    return 0


def median_ms(fn: Callable[[], object], cuda_graph: bool) -> float:
    """Median milliseconds per call; the L2 cache is flushed between calls."""
    import triton.testing

    if cuda_graph:
        return float(triton.testing.do_bench_cudagraph(fn, return_mode="median"))
    return float(triton.testing.do_bench(fn, return_mode="median"))


Timer = Callable[[Callable[[], object]], float]


def bench_decode(
    batch: int,
    context: int,
    args: argparse.Namespace,
    device: torch.device,
    time_ms: Timer,
    peak_gbs: float | None,
) -> dict[str, Any]:
    """One JSON row: the three implementations timed on one paged cache."""
    from kernels.kv_cache_dtype import (
        dequantize_kv,
        is_fp8,
        quantize_kv,
        resolve_kv_cache_dtype,
    )
    from kernels.triton_decode_attention import (
        PARTITION_SIZE,
        decode_attention,
        make_decode_batch,
    )

    dtype = _DTYPES[args.dtype]
    heads, kv_heads, dim, bs = args.heads, args.kv_heads, args.head_dim, args.block_size
    gen = torch.Generator(device=device).manual_seed(args.seed)
    blocks_per_seq = -(-context // bs)
    num_blocks = batch * blocks_per_seq
    cache_shape = (num_blocks, bs, kv_heads, dim)
    k_cache = torch.randn(cache_shape, generator=gen, device=device, dtype=dtype)
    v_cache = torch.randn(cache_shape, generator=gen, device=device, dtype=dtype)
    kv_dtype = resolve_kv_cache_dtype(args.kv_cache_dtype, dtype)
    triton_k, triton_v = k_cache, v_cache
    if is_fp8(kv_dtype):
        # Triton reads the codes; the baselines the values they stand for.
        triton_k, triton_v = (quantize_kv(c, kv_dtype, 1.0) for c in (k_cache, v_cache))
        k_cache, v_cache = (dequantize_kv(c, dtype, 1.0) for c in (triton_k, triton_v))
    # Scattered blocks, as a long-running server's free list hands them out.
    order = torch.randperm(num_blocks, generator=gen, device=device)
    tables = order.view(batch, blocks_per_seq).to(torch.int32)
    query = torch.randn(batch, heads, dim, generator=gen, device=device, dtype=dtype)
    scale = dim**-0.5
    partition = args.partition_size or PARTITION_SIZE
    decode = make_decode_batch(tables, [context] * batch, partition)
    out = torch.empty_like(query)

    def triton_decode() -> None:
        decode_attention(query, triton_k, triton_v, decode, scale, out)

    # The torch backend's formulation: gather by slot, then one SDPA in which the
    # query heads sharing a KV head act as that head's query positions.
    offsets = torch.arange(blocks_per_seq * bs, device=device)[:context]
    slots = (tables.long()[:, offsets // bs] * bs + offsets % bs).reshape(-1)
    flat_k = k_cache.view(-1, kv_heads, dim)
    flat_v = v_cache.view(-1, kv_heads, dim)
    k_buf = torch.empty(batch * context, kv_heads, dim, device=device, dtype=dtype)
    v_buf = torch.empty_like(k_buf)
    q4 = query.view(batch, kv_heads, heads // kv_heads, dim)

    def gather() -> None:
        torch.index_select(flat_k, 0, slots, out=k_buf)
        torch.index_select(flat_v, 0, slots, out=v_buf)

    def sdpa() -> torch.Tensor:
        k = k_buf.view(batch, context, kv_heads, dim).transpose(1, 2)
        v = v_buf.view(batch, context, kv_heads, dim).transpose(1, 2)
        return F.scaled_dot_product_attention(q4, k, v, scale=scale)

    def gather_sdpa() -> None:
        gather()
        sdpa()

    gather()
    triton_decode()
    expected = sdpa().reshape(batch, heads, dim)
    max_abs_err = float((out.float() - expected.float()).abs().max())

    itemsize = torch.empty((), dtype=dtype).element_size()

    def useful_bytes(kv_itemsize: int) -> int:
        return (
            2 * batch * context * kv_heads * dim * kv_itemsize  # K and V
            + 2 * batch * heads * dim * itemsize  # queries in, outputs out
            + tables.numel() * tables.element_size()
        )

    bytes_read = {
        "triton": useful_bytes(triton_k.element_size()),
        "sdpa": useful_bytes(itemsize),
        "gather_sdpa": useful_bytes(itemsize),
    }
    row: dict[str, Any] = {
        "bench": "kernels",
        "kernel": "decode_attention",
        "batch": batch,
        "context": context,
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": dim,
        "block_size": bs,
        "dtype": args.dtype,
        "kv_cache_dtype": str(kv_dtype).removeprefix("torch."),
        "partitions": decode.num_partitions,
        "useful_mb": rounded(bytes_read["triton"] / 1e6),
        "max_abs_err_vs_sdpa": float(f"{max_abs_err:.3g}"),
    }
    timings = {}
    for name, fn in (("triton", triton_decode), ("sdpa", sdpa), ("gather_sdpa", gather_sdpa)):
        ms = time_ms(fn)
        timings[name] = ms
        gbs = bytes_read[name] / (ms * 1e-3) / 1e9
        row[f"{name}_us"] = rounded(ms * 1e3, 2)
        row[f"{name}_gbs"] = rounded(gbs, 1)
        row[f"{name}_peak_frac"] = rounded(gbs / peak_gbs) if peak_gbs else None
    row["speedup_vs_sdpa"] = rounded(timings["sdpa"] / timings["triton"])
    row["speedup_vs_gather_sdpa"] = rounded(timings["gather_sdpa"] / timings["triton"])
    row["peak_gbs"] = peak_gbs
    return row


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if cuda_or_refuse("benchmarks.kernels measures GPU memory bandwidth") is None:
        return 2
    from kernels.triton_support import triton_unavailable_reason

    reason = triton_unavailable_reason(torch.device("cuda"))
    if reason is not None:
        print(f"benchmarks.kernels: {reason}", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    peak = args.peak_gbs or known_peak_gbs(name)
    emit = JsonLines(args.json_out)

    def time_ms(fn: Callable[[], object]) -> float:
        return median_ms(fn, args.cuda_graph)

    with torch.inference_mode():
        for batch in args.batch:
            for context in args.context:
                row = bench_decode(batch, context, args, device, time_ms, peak)
                row["device"] = name
                row["timing"] = "cuda_graph" if args.cuda_graph else "events"
                emit(row)
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
