"""Compile the Triton kernels for real GPUs on a machine without one, and check what they use.

Triton's interpreter proves the kernels' arithmetic on CPU but never compiles
them: a kernel can pass every interpreted test and still fail to compile for
a GPU, need more shared memory than an SM has, or spill registers to local
memory (a large slowdown). Triton ships its own ptxas, so none of that needs
a GPU. This runs the real launchers on CPU tensors for the
model shapes and dtypes the engine serves, with a stand-in driver that names
a GPU architecture; a compile hook compiles each launch for that
architecture, reads the cubin's resource use, and skips the launch itself.

    python -m kernels.triton_offline_compile [--arch 80,90] [--json] [--jobs N]

Exits 1 when a kernel fails to compile, exceeds the architecture's shared
memory, or spills. Must run without TRITON_INTERPRET (it compiles, not
interprets); the tests run it in a subprocess.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from kernels.expert_stack import ExpertStack
from kernels.fp8 import FP8_GEMM_MAX_ROWS, Fp8Block, Fp8Experts, empty_fp8
from kernels.kv_cache_dtype import KvScales
from kernels.mxfp4 import Mxfp4Weight
from kernels.packed_int import INT_GEMM_MAX_ROWS, IntExperts, PackedInt, words_per_row

# Largest dynamic shared memory one block may use, bytes (CUDA programming guide).
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}


@dataclass(frozen=True)
class ModelShape:
    """What decides the kernels' tile sizes: heads, head size, hidden and MLP widths."""

    name: str
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    # Gemma's: a GELU-tanh MLP, and Gemma 2's soft-capped attention scores.
    gelu: bool = False
    softcap: float | None = None
    # A mixture of experts' MLPs: `experts` of width `intermediate`, `top_k` per token.
    experts: int = 0
    top_k: int = 0
    # Routing weights kept in fp32 into the down GEMM (Mixtral's `fp32_routing_weights`);
    # every other family passes them in the model's dtype. Each model launches one.
    fp32_routing: bool = False
    # gpt-oss's: attention sinks, a sliding window, experts with biases and a clamped SwiGLU.
    sinks: bool = False
    window: int | None = None
    gpt_oss_experts: bool = False
    # Also compile the FP8 linear with a scale per row (compressed-tensors' FP8, whose
    # releases are mostly Llama's): one shape stands for the rest (only a constant differs).
    fp8_per_row: bool = False
    # Also compile in fp32 (a GPU serves fp32 only when asked: the parity checks). False
    # for a dense shape whose kernels another shape compiles alike (the same head size,
    # soft-cap or not, and up to 16 query heads per KV head: SmolLM2-1.7B's are
    # SmolLM2-135M's), to keep the test in CI's budget.
    fp32: bool = True
    # Also compile the prefill kernel not causal (encoders': BERT, RoBERTa, XLM-R). One
    # shape with their head size (64) stands for them: only the mask differs.
    non_causal: bool = False


SHAPES = (
    ModelShape("smollm2-135m", 9, 3, 64, 576, 1536, non_causal=True),
    ModelShape("smollm2-1.7b", 32, 32, 64, 2048, 8192, fp32=False),
    ModelShape("llama3-8b", 32, 8, 128, 4096, 14336, fp8_per_row=True),
    ModelShape("gemma3-1b", 4, 1, 256, 1152, 6912, gelu=True),
    ModelShape("gemma2-9b", 16, 8, 256, 3584, 14336, gelu=True, softcap=50.0),
    ModelShape("qwen3-30b-a3b", 32, 4, 128, 2048, 768, experts=128, top_k=8),
    ModelShape("mixtral-8x7b", 32, 8, 128, 4096, 14336, experts=8, top_k=2, fp32_routing=True),
    ModelShape(
        "gpt-oss-20b",
        64,
        8,
        64,
        2880,
        2880,
        experts=32,
        top_k=4,
        sinks=True,
        window=128,
        gpt_oss_experts=True,
    ),
)
# fp16 compiles to the same tiles and registers as bf16 (same element size, no upcast on
# a GPU): bf16 stands for both.
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
FP8_TILES = Fp8Block(128, 128)


@dataclass(frozen=True)
class CompiledLaunch:
    """One kernel specialisation as a launch asked for it, compiled for `arch`."""

    arch: int
    kernel: str
    case: str
    shared_bytes: int
    registers: int
    spill_stores: int
    spill_loads: int
    error: str | None = None

    @property
    def problems(self) -> list[str]:
        found = []
        if self.error:
            found.append(f"does not compile: {self.error}")
        if self.shared_bytes > SHARED_LIMIT.get(self.arch, min(SHARED_LIMIT.values())):
            found.append(f"needs {self.shared_bytes} B of shared memory")
        if self.spill_stores or self.spill_loads:
            found.append(
                f"spills registers ({self.spill_stores} B stored, {self.spill_loads} B loaded)"
            )
        return found


def _usage_in_log(log: str) -> dict[str, int] | None:
    """Registers and spill bytes from a `ptxas -v` log; None if it has none."""
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if registers is None or spills is None:
        return None
    return {
        "registers": int(registers.group(1)),
        "spill_stores": int(spills.group(1)),
        "spill_loads": int(spills.group(2)),
    }


def _ptxas_usage(ptx: str, arch: int, fp_fusion: bool) -> dict[str, int]:
    """Registers and spill bytes as `ptxas -v` reports them, with Triton's own ptxas.

    Only for a kernel Triton found in its cache (it runs ptxas, and prints the
    log, only for a miss): run again on the kernel's PTX, with the flags Triton
    passes that change code generation (`make_cubin`'s).
    """
    from triton import knobs
    from triton.backends.nvidia.compiler import get_ptxas

    tool = get_ptxas(arch).path  # the one Triton itself uses for this architecture
    target = re.search(r"^\.target\s+(sm_\w+)", ptx, re.MULTILINE)
    if target is None:
        raise ValueError("no .target line in the PTX")
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "kernel.ptx"
        source.write_text(ptx)
        log = subprocess.run(
            [
                str(tool),
                "-v",
                *([] if fp_fusion else ["--fmad=false"]),
                "--regAllocOptLevel=2",
                *(knobs.nvidia.ptxas_options or "").split(),
                f"--gpu-name={target.group(1)}",
                str(source),
                "-o",
                str(Path(folder) / "kernel.cubin"),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
    usage = _usage_in_log(log)
    if usage is None:
        raise ValueError(f"unexpected ptxas output: {log}")
    return usage


class _OfflineDriver:
    """Triton's active-driver interface, answering for a GPU that is not there."""

    def __init__(self, arch: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self) -> Any:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


def _launch_all(start_case: Callable[[str], None]) -> None:
    """Launch every kernel the engine runs, over SHAPES and DTYPES, naming each case first."""
    from kernels.triton_clamped_swiglu_and_mul import clamped_swiglu_and_mul
    from kernels.triton_decode_attention import decode_attention, make_decode_batch
    from kernels.triton_experts import fused_experts
    from kernels.triton_fp8_linear import dequantize_fp8, fp8_linear
    from kernels.triton_gelu_tanh_and_mul import gelu_tanh_and_mul
    from kernels.triton_int_linear import dequantize_int, int_linear
    from kernels.triton_prefill_attention import make_prefill_batch, prefill_attention
    from kernels.triton_rms_norm import rms_norm
    from kernels.triton_rotary import apply_rotary
    from kernels.triton_silu_and_mul import silu_and_mul
    from kernels.triton_store_kv import store_kv

    block, blocks = 16, 64
    tables = torch.zeros(2, blocks, dtype=torch.int32)
    for shape in SHAPES:
        for dtype_name, dtype in DTYPES.items():
            if dtype == torch.float32 and not shape.fp32:
                continue

            def t(*size: int, dtype: torch.dtype = dtype) -> torch.Tensor:
                # Never written: a large empty tensor costs address space, not memory
                # (Mixtral's fp32 experts are 5.6 GB, and architectures compile at once).
                return torch.empty(size, dtype=dtype)

            case = f"{shape.name} {dtype_name}"
            h, kvh, d = shape.heads, shape.kv_heads, shape.head_dim
            k_cache, v_cache = t(blocks, block, kvh, d), t(blocks, block, kvh, d)
            start_case(case)
            store_kv(t(3, kvh, d), t(3, kvh, d), k_cache, v_cache, torch.zeros(3, dtype=torch.long))
            sinks = torch.zeros(h) if shape.sinks else None
            scores = {"softcap": shape.softcap, "window": shape.window, "sinks": sinks}
            for context in (100, 1000):  # one partition; several and the combine kernel
                start_case(f"{case} ctx {context}")
                batch = make_decode_batch(tables, [context, context], 512)
                decode_attention(t(2, h, d), k_cache, v_cache, batch, 0.1, **scores)
            start_case(case)
            prefill = make_prefill_batch(tables, [200, 100], [500, 100])
            prefill_attention(t(300, h, d), k_cache, v_cache, prefill, 0.1, **scores)
            if shape.non_causal:
                start_case(f"{case} encoder")
                whole = make_prefill_batch(tables, [200, 100], [200, 100], causal=False)
                prefill_attention(t(300, h, d), k_cache, v_cache, whole, 0.1, **scores)
                start_case(case)
            if dtype == torch.bfloat16:  # an FP8 KV cache (--kv-cache-dtype), GPUs' dtype
                for fp8_name, fp8 in (("e4m3", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2)):
                    start_case(f"{case} kv {fp8_name}")
                    caches = (
                        t(blocks, block, kvh, d, dtype=fp8),
                        t(blocks, block, kvh, d, dtype=fp8),
                    )
                    slots = torch.zeros(3, dtype=torch.long)
                    store_kv(t(3, kvh, d), t(3, kvh, d), *caches, slots, KvScales(0.5, 0.25))
                    batch = make_decode_batch(tables, [1000, 1000], 512)
                    decode_attention(t(2, h, d), *caches, batch, 0.1, **scores)
                    prefill_attention(t(300, h, d), *caches, prefill, 0.1, **scores)
            rms_norm(t(4, shape.hidden), t(shape.hidden), 1e-5)
            start_case(f"{case} +residual")
            rms_norm(t(4, shape.hidden), t(shape.hidden), 1e-5, t(4, shape.hidden))
            start_case(case)
            cos_sin = t(4, 1, d // 2)
            apply_rotary(t(4, h + kvh, d), cos_sin, cos_sin)
            act_and_mul = gelu_tanh_and_mul if shape.gelu else silu_and_mul
            biases: tuple[torch.Tensor, ...] = ()
            if shape.gpt_oss_experts:
                act_and_mul = partial(clamped_swiglu_and_mul, alpha=1.702, limit=7.0)
                biases = (t(shape.experts, 2 * shape.intermediate), t(shape.experts, shape.hidden))
            act_and_mul(t(4, 2 * shape.intermediate))
            # Quantized weights are compiled in bf16 only: a GPU serves FP8, GPTQ/AWQ and
            # MXFP4 checkpoints in 16-bit activations (vLLM's kernels take nothing else), and
            # fp32 ones only when asked (parity runs). Their fp32 GEMMs were a quarter of
            # the compiles, the heaviest (the whole took 570 s on a cold cache in CI).
            quantized = dtype == torch.bfloat16
            # An FP8 checkpoint's projections (128 x 128 tiles, as released, and a scale
            # per row, compressed-tensors'): q/k/v and down, at a decode's rows and the
            # GEMM's most; longer inputs dequantize.
            qkv_rows = (h + 2 * kvh) * d
            projections = ((qkv_rows, shape.hidden), (shape.hidden, shape.intermediate))
            for rows_out, cols_in in projections if quantized else ():
                values = t(rows_out, cols_in, dtype=torch.uint8)
                per_row = (Fp8Block(1, cols_in),) if shape.fp8_per_row else ()
                for tiles in (FP8_TILES, *per_row):
                    scales = t(*tiles.scales_shape(rows_out, cols_in), dtype=torch.float32)
                    for rows in (2, FP8_GEMM_MAX_ROWS):
                        start_case(f"{case} fp8 {tiles.rows}x{tiles.cols} {rows} rows")
                        fp8_linear(t(rows, cols_in), values, scales, tiles, t(rows_out))
                    dequantize_fp8(values, scales, tiles, dtype)
                # A GPTQ/AWQ/W4A16 checkpoint's (4-bit, groups of 128; GPTQ's 8- and
                # 2-bit), with a bias (Qwen2's q/k/v) and without (every other).
                # Plain runs of groups (a tile's scales read once) and act-order's.
                for bits, group_size in ((2, 128), (4, 128), (8, 128), (4, 0)):
                    groups = torch.zeros(cols_in, dtype=torch.int32)
                    per_group = t(rows_out, -(-cols_in // 128), dtype=torch.float32)
                    words = t(rows_out, words_per_row(cols_in, bits), dtype=torch.int32)
                    packed = PackedInt(words, per_group, per_group, groups, bits, group_size)
                    for rows in (2, INT_GEMM_MAX_ROWS):
                        start_case(f"{case} int{bits} g{group_size} {rows} rows")
                        for bias in (None, t(rows_out)):
                            int_linear(t(rows, cols_in), packed, bias)
                    dequantize_int(packed, dtype)
            start_case(case)
            if not shape.experts:
                continue
            e, h, i = shape.experts, shape.hidden, shape.intermediate
            stacks: dict[str, tuple[ExpertStack, ExpertStack]] = {"": (t(e, 2 * i, h), t(e, h, i))}
            if quantized and shape.gpt_oss_experts:  # as released: MXFP4
                stacks[" mxfp4"] = (_empty_mxfp4(e, 2 * i, h), _empty_mxfp4(e, h, i))
            elif quantized:  # the -FP8 releases: 128 x 128 tiles; compressed-tensors' and
                # --quantization fp8's: a scale per row, at a decode's and a prefill's size
                tiled = (_empty_fp8(e, 2 * i, h, FP8_TILES), _empty_fp8(e, h, i, FP8_TILES))
                stacks[" fp8"] = tiled
                gate_up_rows, down_rows = Fp8Block(1, h), Fp8Block(1, i)
                per_row = (_empty_fp8(e, 2 * i, h, gate_up_rows), _empty_fp8(e, h, i, down_rows))
                stacks[" fp8 per row"] = per_row
                # GPTQ/AWQ MoE releases: 4-bit, groups of 128 (a tile's scales read
                # once), and act-order's (read per element); 8-bit (GPTQ Int8, W8A16).
                for bits, group_size in ((4, 128), (4, 0), (8, 128)):
                    packed = (
                        _empty_int(e, 2 * i, h, bits, group_size),
                        _empty_int(e, h, i, bits, group_size),
                    )
                    stacks[f" int{bits} g{group_size}"] = packed
            # Each row block `_tiles` picks (16, 32, 64 rows) in this model's routing dtype:
            # a decode step's, and the tokens that give each of its experts ~40 and ~100
            # rows (Mixtral's 8 experts reach 64-row blocks at 400 tokens, Qwen3's 128
            # at 1600, within one prefill chunk).
            for tokens in (2, *(-(-rows * e // shape.top_k) for rows in (40, 100))):
                chosen = torch.arange(tokens * shape.top_k).view(tokens, -1) % e
                for stack_name, (gate_up, down) in stacks.items():
                    start_case(f"{case} {tokens} tokens{stack_name}")
                    routing = torch.float32 if shape.fp32_routing else dtype
                    weights = t(tokens, shape.top_k, dtype=routing)
                    x = t(tokens, h)
                    fused_experts(x, gate_up, down, weights, chosen, act_and_mul, *biases)


def _empty_mxfp4(experts: int, rows: int, cols: int) -> Mxfp4Weight:
    blocks = torch.empty(experts, rows, cols // 2, dtype=torch.uint8)
    return Mxfp4Weight(blocks, torch.empty(experts, rows, cols // 32, dtype=torch.uint8))


def _empty_fp8(experts: int, rows: int, cols: int, tiles: Fp8Block) -> Fp8Experts:
    return Fp8Experts(*empty_fp8((experts, rows, cols), tiles), tiles)


def _empty_int(experts: int, rows: int, cols: int, bits: int, group_size: int) -> IntExperts:
    codes = torch.empty(experts, rows, words_per_row(cols, bits), dtype=torch.int32)
    per_group = torch.empty(experts, rows, -(-cols // 128), dtype=torch.float32)
    groups = torch.zeros(experts, cols, dtype=torch.int32)
    return IntExperts(codes, per_group, per_group, groups, bits, group_size)


def _compile_one(source: Any, options: dict[str, Any], arch: int, name: str) -> CompiledLaunch:
    """Compile one specialisation for sm_`arch` and read its resource use."""
    import triton
    from triton import knobs
    from triton.runtime.driver import driver

    # Triton's own `ptxas -v` log, printed on a cache miss: half the ptxas runs of a cold
    # cache, and exactly the flags Triton compiled with. Both the knob and stdout are the
    # process's: compiles here must stay one at a time (one process per architecture).
    log = io.StringIO()
    try:
        with knobs.nvidia.scope(), contextlib.redirect_stdout(log):
            knobs.nvidia.dump_ptxas_log = True
            kernel = triton.compile(source, target=driver.active.target, options=options)
    except Exception as exc:  # any compiler failure is the finding
        message = str(exc).strip().splitlines()
        return CompiledLaunch(arch, name, "", 0, 0, 0, 0, message[-1])
    usage = _usage_in_log(log.getvalue()) or _ptxas_usage(
        kernel.asm["ptx"], arch, kernel.metadata.enable_fp_fusion
    )
    return CompiledLaunch(
        arch,
        name,
        "",
        kernel.metadata.shared,
        usage["registers"],
        usage["spill_stores"],
        usage["spill_loads"],
    )


def compile_all(arch: int) -> list[CompiledLaunch]:
    """Compile every launch of `_launch_all` for sm_`arch`; launch nothing."""
    from triton import knobs
    from triton.compiler import ASTSource
    from triton.runtime.driver import driver

    if knobs.runtime.interpret:
        raise RuntimeError("unset TRITON_INTERPRET: this compiles the kernels, it cannot interpret")
    results: list[CompiledLaunch] = []
    case = [""]
    # Many launches ask for a specialisation an earlier one compiled (another model with
    # the same head size, the same kernel at another context): compiled and measured once.
    seen: dict[str, CompiledLaunch] = {}

    def start_case(name: str) -> None:
        case[0] = name

    def hook(*, fn: Any, compile: dict[str, Any], **_: Any) -> bool:
        options = {
            key: compile[key] for key in ("num_warps", "num_ctas", "num_stages", "enable_fp_fusion")
        }
        source = ASTSource(
            fn.jit_function, compile["signature"], compile["constants"], compile["configs"][0]
        )
        key = source.hash() + repr(sorted(options.items()))
        if key not in seen:
            seen[key] = _compile_one(source, options, arch, fn.name)
        results.append(replace(seen[key], case=case[0]))
        return True  # compiled here: the launch itself is skipped

    previous_hook = knobs.runtime.jit_cache_hook
    # Saved as is: `reset_active()` would look for a real driver, and there is none.
    previous_driver = driver._active
    driver.set_active(_OfflineDriver(arch))  # type: ignore[arg-type]
    knobs.runtime.jit_cache_hook = hook
    try:
        _launch_all(start_case)
    finally:
        knobs.runtime.jit_cache_hook = previous_hook
        driver._active = previous_driver
    return results


def _arch_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kernels.triton_offline_compile",
        description="Compile the Triton kernels for GPU architectures without a GPU.",
    )
    parser.add_argument("--arch", type=_arch_list, default=[80, 90], help="e.g. 80,90")
    parser.add_argument("--json", action="store_true", help="one JSON line per launch")
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(len(os.sched_getaffinity(0)), 8),
        help="architectures compiled at once, one process each (default: the CPUs)",
    )
    args = parser.parse_args(argv)
    failed = 0
    # One process per architecture: ptxas and Triton's compiler use one core each, and
    # each process holds its own stand-in driver.
    jobs = max(1, min(args.jobs, len(args.arch)))
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        compiled = list(pool.map(compile_all, args.arch))
    for arch, launches in zip(args.arch, compiled, strict=True):
        for launch in launches:
            problems = launch.problems
            failed += bool(problems)
            if args.json:
                print(json.dumps({**asdict(launch), "problems": problems}))
            else:
                status = "; ".join(problems) or "ok"
                print(
                    f"sm_{arch} {launch.kernel:28} {launch.case:28} "
                    f"smem {launch.shared_bytes:6} regs {launch.registers:3}  {status}"
                )
    if failed:
        print(f"{failed} kernel launches have problems", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
