"""What serving LoRA adapters costs: the same requests on the base model, on one adapter,
and spread over several adapters in one batch.

One engine holds `--num-adapters` random adapters (PEFT folders written by
`benchmarks.random_lora`: cost depends on rank and targets, not on values) and
runs each mode in turn on the same prompts, alternating so machine noise hits
all alike:

- base: no adapter (the LoRA layers see no rows: what the base model pays
  for the engine serving adapters at all);
- one: every request on adapter 0;
- mixed: request i on adapter i % num_adapters (what multi-LoRA serving is for).

Each line reports output tokens/s per mode and each mode over base.

    python -m benchmarks.lora --concurrency 1,8 --rank 16 --num-adapters 4
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.args import add_engine_args
from benchmarks.engine import make_prompts
from benchmarks.random_lora import build_random_lora
from benchmarks.report import JsonLines
from engine.llm import LLM, greedy
from engine.loader import resolve_model
from engine.lora_adapter import UNFUSED_PROJECTIONS
from engine.lora_config import LoRAConfig

MODES = ("base", "one", "mixed")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="conveyor bench lora", description=__doc__)
    add_engine_args(p)
    p.add_argument("--num-adapters", type=int, default=4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--targets", default=",".join(UNFUSED_PROJECTIONS), help="comma-separated")
    p.add_argument("--concurrency", default="1,8", help="comma-separated request counts")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2, help="passes over the modes per point")
    p.add_argument("--json-out", type=Path, default=None, help="append the JSON lines here")
    return p.parse_args(argv)


def loras_for(mode: str, count: int, num_adapters: int) -> list[str | None]:
    if mode == "base":
        return [None] * count
    if mode == "one":
        return ["lora-0"] * count
    return [f"lora-{i % num_adapters}" for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.num_adapters < 1:
        raise SystemExit("--num-adapters must be at least 1")
    base = resolve_model(args.model, args.data_dir).path
    targets = [t for t in args.targets.split(",") if t]
    emit = JsonLines(args.json_out)
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-lora-") as folder:
        entries = [
            f"lora-{i}="
            + str(
                build_random_lora(
                    Path(folder) / f"lora-{i}", base, args.rank, 2.0 * args.rank, targets, seed=i
                )
            )
            for i in range(args.num_adapters)
        ]
        llm = LLM(
            str(base),
            device=args.device,
            dtype=args.dtype,
            data_dir=args.data_dir,
            lora_config=LoRAConfig.from_entries(entries, max(16, args.rank)),
            # Every round prefills again: cached prompts would hide what LoRA costs there.
            enable_prefix_caching=False,
        )
        params = greedy(args.output_len, min_tokens=args.output_len, ignore_eos=True)
        llm.generate(make_prompts(llm.tokenizer, 2, args.prompt_len), greedy(8), lora="lora-0")
        for n in (int(c) for c in args.concurrency.split(",")):
            prompts = make_prompts(llm.tokenizer, n, args.prompt_len)
            seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
            for _ in range(args.rounds):
                for mode in MODES:
                    start = time.perf_counter()
                    llm.generate(prompts, params, lora=loras_for(mode, n, args.num_adapters))
                    seconds[mode].append(time.perf_counter() - start)
            rate = {mode: n * args.output_len / statistics.fmean(s) for mode, s in seconds.items()}
            line: dict[str, Any] = {
                "bench": "lora",
                "concurrency": n,
                "num_adapters": args.num_adapters,
                "rank": args.rank,
                "targets": targets,
                "prompt_len": args.prompt_len,
                "output_len": args.output_len,
                "device": str(llm.engine.device),
                "dtype": str(llm.engine.dtype).removeprefix("torch."),
            }
            for mode in MODES:
                line[f"{mode}_tok_s"] = round(rate[mode], 2)
            line["one_over_base"] = round(rate["one"] / rate["base"], 3)
            line["mixed_over_base"] = round(rate["mixed"] / rate["base"], 3)
            emit(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
