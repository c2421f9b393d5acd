"""What an FP8 KV cache buys and costs: capacity, speed and agreement, side by side.

Engines on one model, identical but for `--kv-cache-dtype` (auto, fp8 and
fp8_e5m2 by default) and given the same KV memory, run the same greedy chat
requests in alternating rounds (so machine noise hits them alike). One line
per (cache dtype, concurrency):

- kv_tokens: tokens the cache holds in that memory, and the ratio to auto's;
- output tokens/s, and the ratio to auto's at the same concurrency;
- agreement with the auto cache's greedy output: the mean share of each
  request's tokens before the first difference, and the share of requests
  whose whole output is the same (a full-precision cache gives 1 and 1).

    python -m benchmarks.kv_cache --concurrency 1,16 --output-len 64
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.args import add_engine_args, int_list
from benchmarks.engine import matching_prefix
from benchmarks.report import JsonLines, rounded
from engine.llm import LLM, greedy
from kernels.kv_cache_dtype import resolve_kv_cache_dtype

QUESTIONS = [
    "What is the capital of France, and what is it known for?",
    "Write a haiku about the sea.",
    "Explain what a hash table is to a new programmer.",
    "List five fruits that are red.",
    "Why is the sky blue?",
    "Give me three tips for a job interview.",
    "Translate 'good morning, my friend' into Spanish.",
    "Write a Python function that reverses a string.",
    "What happens when water boils at high altitude?",
    "Summarise the plot of Romeo and Juliet in two sentences.",
    "How do I make a cup of green tea?",
    "Name the planets of the solar system in order.",
    "What is the difference between weather and climate?",
    "Write a short thank-you note to a neighbour.",
    "Count from 1 to 20 in French.",
    "What are prime numbers? Give examples.",
]


def prompts(llm: LLM, count: int) -> list[list[int]]:
    return [
        llm.tokenizer.apply_chat_template(
            [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            add_generation_prompt=True,
        )
        for i in range(count)
    ]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="conveyor bench kv-cache", description=__doc__)
    add_engine_args(p, data_dir=False)
    p.add_argument(
        "--kv-cache-dtypes", default="auto,fp8,fp8_e5m2", help="comma-separated; auto first"
    )
    p.add_argument(
        "--kv-cache-memory", type=int, default=256 << 20, help="KV cache bytes each (CPU)"
    )
    p.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.25,
        help="the auto engine's share of the GPU; the others get its cache's bytes",
    )
    p.add_argument(
        "--max-model-len", type=int, default=2048, help="each engine's (the cache must hold it)"
    )
    p.add_argument("--concurrency", type=int_list, default=[1, 16], help="comma-separated")
    p.add_argument("--output-len", type=int, default=64, help="tokens per request")
    p.add_argument("--rounds", type=int, default=2, help="rounds of every engine per point")
    p.add_argument("--json-out", type=Path, default=None, help="append the JSON lines here")
    args = p.parse_args(argv)
    args.kv_cache_dtypes = args.kv_cache_dtypes.split(",")
    if args.kv_cache_dtypes[0] != "auto":
        p.error("--kv-cache-dtypes must start with auto: the others are compared with it")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    knobs: dict[str, Any] = {
        "device": args.device,
        "dtype": args.dtype,
        "max_model_len": args.max_model_len,
    }
    reference = LLM(
        args.model,
        kv_cache_memory=args.kv_cache_memory,
        gpu_memory_utilization=args.gpu_memory_utilization,
        **knobs,
    )
    # The others get the bytes auto's cache took (on a GPU a later engine's budget would
    # also count the earlier engines' caches): as many blocks as fit them.
    auto_bytes = reference.engine.dtype.itemsize
    engines = {"auto": reference}
    for name in args.kv_cache_dtypes[1:]:
        itemsize = resolve_kv_cache_dtype(name, reference.engine.dtype).itemsize
        blocks = reference.engine.num_kv_blocks * auto_bytes // itemsize
        engines[name] = LLM(args.model, kv_cache_dtype=name, num_kv_blocks=blocks, **knobs)
    params = greedy(args.output_len, ignore_eos=True)
    for llm in engines.values():  # warm-up
        llm.generate(prompts(llm, 2), greedy(4))
    emit = JsonLines(args.json_out)
    for n in args.concurrency:
        batch = prompts(reference, n)
        seconds: dict[str, list[float]] = {name: [] for name in engines}
        outputs: dict[str, list[list[int]]] = {}
        for _ in range(args.rounds):
            for name, llm in engines.items():
                start = time.perf_counter()
                results = llm.generate(batch, params)
                seconds[name].append(time.perf_counter() - start)
                outputs[name] = [r.token_ids for r in results]
        rate = {name: n * args.output_len / statistics.fmean(s) for name, s in seconds.items()}
        for name, llm in engines.items():
            agreement = [
                matching_prefix(ours, theirs) / len(theirs)
                for ours, theirs in zip(outputs[name], outputs["auto"], strict=True)
            ]
            tokens = llm.engine.num_kv_blocks * llm.engine.config.block_size
            auto_tokens = reference.engine.num_kv_blocks * reference.engine.config.block_size
            line: dict[str, Any] = {
                "bench": "kv_cache",
                "kv_cache_dtype": name,
                "concurrency": n,
                "output_len": args.output_len,
                "kv_tokens": tokens,
                "kv_tokens_vs_auto": rounded(tokens / auto_tokens),
                "output_tok_s": rounded(rate[name], 2),
                "tok_s_vs_auto": rounded(rate[name] / rate["auto"]),
                "greedy_prefix_vs_auto": rounded(statistics.fmean(agreement)),
                "greedy_identical_vs_auto": rounded(
                    sum(a == 1.0 for a in agreement) / len(agreement)
                ),
                "device": str(llm.engine.device),
                "dtype": str(llm.engine.dtype).removeprefix("torch."),
            }
            emit(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
