"""Engine benchmark: conveyor's engine against HF `generate`, side by side, in one run.

These machines are noisy and shared, so an absolute tokens/s says little; the
ratios measured in the same process minutes apart do (DESIGN.md section 5).
One run times HF `generate` (batch 1 and a few static batches), then our engine
at a few concurrencies (all requests submitted at once to one warm engine),
then probes the machine's matmul and memory-bandwidth ceilings, and prints one
JSON line per configuration plus a summary line with the ceilings and ratios.

    python -m benchmarks.engine --prompt-len 128 --output-len 128
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.args import int_list
from benchmarks.probes import DecodeDims, gemm_gflops, memory_bandwidth_gbs
from benchmarks.prompts import PARAGRAPH
from benchmarks.report import JsonLines, rounded
from engine.config import EngineConfig, ModelConfig, resolve_dtype
from engine.llm import LLM, greedy
from engine.loader import resolve_model


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="conveyor bench engine",
        description="Compare conveyor's engine with HF generate on the same weights.",
    )
    p.add_argument(
        "--model",
        default=None,
        help="HF model folder or .gguf file (default: the bundled model); "
        "`python -m benchmarks.random_model` writes random weights of a real shape",
    )
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: auto)")
    p.add_argument("--attention-backend", default=None, help="torch or triton (default: by device)")
    p.add_argument("--prompt-len", type=int, default=128, help="prompt tokens per request")
    p.add_argument("--output-len", type=int, default=128, help="generated tokens per request")
    p.add_argument(
        "--concurrency",
        type=int_list,
        default=[1, 16, 64],
        help="comma-separated numbers of requests submitted at once to our engine",
    )
    p.add_argument(
        "--hf-batches",
        type=int_list,
        default=[16, 64],
        help="comma-separated HF generate batch sizes (batch 1 is always run)",
    )
    p.add_argument("--skip-hf", action="store_true", help="do not run HF generate")
    p.add_argument(
        "--probe-seconds",
        type=float,
        default=1.0,
        help="how long each machine-ceiling probe (GEMM, memory bandwidth) keeps timing reps",
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--max-num-seqs", type=int, default=None, help="engine knob")
    p.add_argument("--max-num-batched-tokens", type=int, default=None, help="engine knob")
    p.add_argument(
        "--no-prefix-caching", action="store_true", help="disable the engine's prefix cache"
    )
    p.add_argument("--enforce-eager", action="store_true", help="no decode CUDA graphs (GPU only)")
    p.add_argument(
        "--quantization",
        choices=["fp8"],
        default=None,
        help="engine knob: quantize the weights to FP8 as they load",
    )
    p.add_argument(
        "--kv-cache-dtype",
        choices=["auto", "fp8", "fp8_e4m3", "fp8_e5m2"],
        default="auto",
        help="engine knob: fp8 caches a byte per key and value",
    )
    p.add_argument("--json-out", type=Path, default=None, help="append the JSON lines here")
    args = p.parse_args(argv)
    if args.prompt_len < 1 or args.output_len < 1:
        p.error("--prompt-len and --output-len must be at least 1")
    return args


def make_prompts(tokenizer: Any, count: int, prompt_len: int, start: int = 0) -> list[list[int]]:
    """`count` distinct prompts of exactly `prompt_len` tokens, numbered from `start`."""
    body_tokens = len(tokenizer.encode(PARAGRAPH, add_special_tokens=False))
    body = PARAGRAPH * (prompt_len // max(body_tokens, 1) + 2)
    prompts = []
    for i in range(start, start + count):
        ids = tokenizer.encode(f"Note {i}: {body}", add_special_tokens=False)
        prompts.append(ids[:prompt_len])
    return prompts


def matching_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two outputs share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# --- HF transformers ------------------------------------------------------------------


def _left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def _hf_generate(
    model: Any, prompts: list[list[int]], output_len: int, pad_id: int, device: torch.device
) -> torch.Tensor:
    """Greedy, fixed-length HF generate; returns the new tokens, [batch, output_len]."""
    ids, mask = _left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=output_len,
            min_new_tokens=output_len,
            pad_token_id=pad_id,
        )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out[:, ids.shape[1] :].cpu()


def run_hf(
    path: Path,
    tokenizer: Any,
    batches: list[int],
    args: argparse.Namespace,
    device: torch.device,
    dtype: torch.dtype,
    emit: JsonLines,
) -> list[int]:
    """Time HF generate at each batch size; returns batch 1's greedy tokens."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id
    _hf_generate(model, make_prompts(tokenizer, 1, 4, start=10**6), 2, pad_id, device)
    single_stream: list[int] = []
    for batch in batches:
        prompts = make_prompts(tokenizer, batch, args.prompt_len)
        start = time.perf_counter()
        new_tokens = _hf_generate(model, prompts, args.output_len, pad_id, device)
        seconds = time.perf_counter() - start
        tokens = new_tokens.numel()
        if batch == 1:
            single_stream = new_tokens[0].tolist()
        emit(
            {
                "bench": "engine",
                "system": "hf",
                "batch": batch,
                "prompt_len": args.prompt_len,
                "output_len": args.output_len,
                "output_tokens": tokens,
                "seconds": rounded(seconds),
                "output_tok_s": rounded(tokens / seconds, 2),
                "threads": torch.get_num_threads(),
                "device": str(device),
            }
        )
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return single_stream


# --- conveyor -------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_conveyor_config(
    llm: LLM, prompts: list[list[int]], args: argparse.Namespace, tag: str
) -> tuple[dict[str, Any], list[int]]:
    """Submit every prompt at once, step the engine until all finish, time each step.

    Returns the JSON line and the first prompt's greedy tokens.

    A step counts as pure decode when nothing was waiting, every running
    sequence produced a token, and none of those was a first token (which
    would mean its prompt finished in this very step).
    """
    engine = llm.engine
    params = greedy(args.output_len, ignore_eos=True)
    tokens_of: dict[str, list[int]] = {}
    ttft: list[float] = []
    tpot: list[float] = []
    cached = 0
    step_s: list[float] = []
    decode_s: list[float] = []
    decode_tokens = 0
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        request_id = f"{tag}-{i}"
        tokens_of[request_id] = []
        engine.add_request(request_id, prompt, params)
    while engine.has_unfinished():
        before = engine.stats()
        t0 = time.perf_counter()
        outs = engine.step()
        dt = time.perf_counter() - t0
        step_s.append(dt)
        produced = 0
        first_token = False
        for out in outs:
            for choice in out.outputs:
                produced += len(choice.token_ids)
                first_token = first_token or choice.num_output_tokens <= 1
                tokens_of[out.request_id].extend(choice.token_ids)
            if out.finished:
                cached += out.num_cached_tokens
                t = out.times
                if t.first_token is not None:
                    ttft.append(t.first_token - t.arrival)
                    made = len(tokens_of[out.request_id])
                    if t.finished is not None and made > 1:
                        tpot.append((t.finished - t.first_token) / (made - 1))
        if before.num_waiting == 0 and produced == before.num_running and not first_token:
            decode_s.append(dt)
            decode_tokens += produced
    seconds = time.perf_counter() - start
    counts = {r: len(t) for r, t in tokens_of.items()}
    short = {r: n for r, n in counts.items() if n != args.output_len}
    if short:
        raise RuntimeError(f"requests did not produce {args.output_len} tokens: {short}")
    tokens = sum(counts.values())
    other_s = sum(step_s) - sum(decode_s)
    num_other = len(step_s) - len(decode_s)
    line = {
        "bench": "engine",
        "system": "conveyor",
        "concurrency": len(prompts),
        "prompt_len": args.prompt_len,
        "output_len": args.output_len,
        "output_tokens": tokens,
        "seconds": rounded(seconds),
        "output_tok_s": rounded(tokens / seconds, 2),
        "num_steps": len(step_s),
        "mean_step_ms": rounded(1e3 * statistics.fmean(step_s)) if step_s else None,
        "mean_decode_step_ms": rounded(1e3 * statistics.fmean(decode_s)) if decode_s else None,
        "mean_prefill_step_ms": rounded(1e3 * other_s / num_other) if num_other else None,
        "decode_tok_s": rounded(decode_tokens / sum(decode_s), 2) if decode_s else None,
        "step_overhead_pct": rounded(100 * (1 - sum(step_s) / seconds), 2),
        "ttft_ms_p50": rounded(1e3 * _percentile(ttft, 0.5)) if ttft else None,
        "tpot_ms_p50": rounded(1e3 * _percentile(tpot, 0.5)) if tpot else None,
        "cached_prompt_tokens": cached,
        "threads": torch.get_num_threads(),
        "device": str(engine.device),
    }
    return line, tokens_of[f"{tag}-0"]


def run_conveyor(
    tokenizer: Any, concurrencies: list[int], args: argparse.Namespace, emit: JsonLines
) -> list[int]:
    """Time our engine at each concurrency; returns the first prompt's greedy tokens."""
    knobs: dict[str, object] = {
        "device": args.device,
        "dtype": args.dtype,
        "attention_backend": args.attention_backend,
        "kv_cache_dtype": args.kv_cache_dtype,
        "quantization": args.quantization,
    }
    if args.max_num_seqs is not None:
        knobs["max_num_seqs"] = args.max_num_seqs
    if args.max_num_batched_tokens is not None:
        knobs["max_num_batched_tokens"] = args.max_num_batched_tokens
    if args.no_prefix_caching:
        knobs["enable_prefix_caching"] = False
    if args.enforce_eager:
        knobs["enforce_eager"] = True
    llm = LLM(args.model, **knobs)
    # Warm-up: first-call allocations and lazy init are not what we measure.
    llm.generate(make_prompts(tokenizer, 1, 4, start=10**6), greedy(2, ignore_eos=True))
    # Prompt numbers never repeat across configs, so no config reuses another's cache.
    # The first config starts at prompt 0, HF's batch-1 prompt: their greedy tokens compare.
    next_prompt = 0
    first: list[int] = []
    for n in concurrencies:
        prompts = make_prompts(tokenizer, n, args.prompt_len, start=next_prompt)
        line, tokens = run_conveyor_config(llm, prompts, args, tag=f"bench-c{n}")
        if next_prompt == 0:
            first = tokens
        next_prompt += n
        emit(line)
    del llm
    gc.collect()
    return first


# --- summary --------------------------------------------------------------------------


def _best(lines: list[dict[str, Any]], system: str, key: str, n: int | None = None) -> Any:
    rows = [r for r in lines if r.get("system") == system and (n is None or r.get(key) == n)]
    return max(rows, key=lambda r: r["output_tok_s"], default=None)


def summarize(
    lines: list[dict[str, Any]],
    dims: DecodeDims,
    concurrencies: list[int],
    device: torch.device,
    dtype: torch.dtype,
    probe_seconds: float = 1.0,
) -> dict[str, Any]:
    """Machine ceilings (measured now) and the ratios that make a run comparable."""
    probe = {
        "device": device if device.type == "cuda" else torch.device("cpu"),
        "budget_s": probe_seconds,
    }
    gemm_decode = gemm_gflops("decode", dims=dims, dtype=dtype, **probe)
    gemm_square = gemm_gflops("square", dtype=dtype, **probe)
    bandwidth = memory_bandwidth_gbs(**probe)
    params = dims.params_per_token()
    itemsize = torch.empty((), dtype=dtype).element_size()
    bw_bound = bandwidth * 1e9 / (params * itemsize)
    compute_bound = gemm_decode * 1e9 / (2 * params)

    def ratio(a: dict[str, Any] | None, b: dict[str, Any] | float | None) -> float | None:
        if a is None or b is None:
            return None
        denominator = b if isinstance(b, float) else b["output_tok_s"]
        return rounded(a["output_tok_s"] / denominator)

    ours_1 = _best(lines, "conveyor", "concurrency", 1)
    top = max(concurrencies)
    ours_top = _best(lines, "conveyor", "concurrency", top)
    hf_1 = _best(lines, "hf", "batch", 1)
    hf_best = _best(lines, "hf", "batch")
    return {
        "bench": "engine",
        "system": "summary",
        "threads": torch.get_num_threads(),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "params_per_token": params,
        "gemm_gflops_decode_shape": rounded(gemm_decode, 1),
        "gemm_gflops_square": rounded(gemm_square, 1),
        "mem_bw_gbs": rounded(bandwidth, 2),
        "bandwidth_bound_single_stream_tok_s": rounded(bw_bound, 2),
        "compute_bound_tok_s": rounded(compute_bound, 2),
        "hf_best_batch": hf_best["batch"] if hf_best else None,
        "single_stream_vs_hf": ratio(ours_1, hf_1),
        "single_stream_vs_bandwidth_bound": ratio(ours_1, bw_bound),
        f"aggregate{top}_vs_hf_best": ratio(ours_top, hf_best),
        f"aggregate{top}_vs_compute_bound": ratio(ours_top, compute_bound),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    config = EngineConfig(model=args.model, device=args.device, dtype=args.dtype)
    device = config.torch_device()
    dtype = resolve_dtype(config.dtype, device)
    resolved = resolve_model(config.model, config.data_dir)
    mc = ModelConfig.from_folder(resolved.path)
    dims = DecodeDims(
        hidden=mc.hidden_size,
        intermediate=mc.intermediate_size,
        vocab=mc.vocab_size,
        q_dim=mc.num_heads * mc.head_dim,
        kv_dim=mc.num_kv_heads * mc.head_dim,
        num_layers=mc.num_layers,
    )
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    probe = make_prompts(tokenizer, 1, args.prompt_len)[0]
    if len(probe) != args.prompt_len:
        print(f"cannot build prompts of {args.prompt_len} tokens", file=sys.stderr)
        return 2
    emit = JsonLines(args.json_out)
    hf_tokens: list[int] | None = None
    if not args.skip_hf:
        batches = sorted({1, *args.hf_batches})
        hf_tokens = run_hf(resolved.path, tokenizer, batches, args, device, dtype, emit)
    ours = run_conveyor(tokenizer, args.concurrency, args, emit)
    summary = summarize(emit.lines, dims, args.concurrency, device, dtype, args.probe_seconds)
    if hf_tokens is not None:
        # Tokens until the first disagreement with HF on the same prompt. In fp32 all of
        # them should agree; in bf16/fp16 an early divergence can be rounding, not a bug.
        summary["greedy_tokens_matching_hf"] = matching_prefix(ours, hf_tokens)
        summary["greedy_tokens_compared"] = len(hf_tokens)
    emit(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
