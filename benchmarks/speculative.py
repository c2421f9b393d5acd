"""What n-gram speculative decoding buys: the same greedy requests with and without it.

Two engines on one model, identical but for `--speculative-config`, run each
workload in turn (alternating, so machine noise hits both alike). Greedy
output is identical by construction; the line says so (`identical`; with
`--temperature` above 0 the requests sample, unseeded, so drafts are verified
by speculative sampling and the outputs are draws, not comparable), and
reports output tokens/s for both, their ratio, the acceptance rate and the
share of output tokens that arrived as accepted drafts. Workloads:

- copy: "repeat after me" chat requests (the output is in the prompt);
- code: a Python file with repetitive structure to continue;
- free: open-ended chat (little to look up: the cost of trying).

    python -m benchmarks.speculative --concurrency 1,8 --output-len 96
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.report import JsonLines
from engine.llm import LLM, greedy
from engine.sampling_params import SamplingParams

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank, and the old cat "
    "sleeps on the warm red mat by the door.",
    "Our team ships the release on Friday after the last tests pass and the docs are "
    "reviewed by two people from the support group.",
    "Please send the signed contract, the invoice for March and the delivery notes to "
    "the office in Lyon before the end of the month.",
    "Water boils at one hundred degrees at sea level, but at high altitude it boils at a "
    "lower temperature because the air pressure is lower.",
]
TOPICS = ["a lighthouse keeper", "a lost robot", "a mountain village", "a night train"]
CODE = """class Inventory:
    def add_apple(self, count: int) -> None:
        self.items["apple"] = self.items.get("apple", 0) + count

    def add_pear(self, count: int) -> None:
        self.items["pear"] = self.items.get("pear", 0) + count

    def add_plum(self, count: int) -> None:
        self.items["plum"] = self.items.get("plum", 0) + count

    def add_{fruit}(self, count: int) -> None:
"""
FRUITS = ["fig", "kiwi", "lime", "date"]


def workload(llm: LLM, name: str, count: int) -> list[list[int]]:
    tokenizer = llm.tokenizer
    if name == "code":
        return [tokenizer.encode(CODE.format(fruit=FRUITS[i % len(FRUITS)])) for i in range(count)]
    if name == "copy":
        texts = [
            f"Repeat after me, word for word: {SENTENCES[i % len(SENTENCES)]}" for i in range(count)
        ]
    else:
        texts = [f"Tell me a short story about {TOPICS[i % len(TOPICS)]}." for i in range(count)]
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True)
        for t in texts
    ]


def run_once(
    llm: LLM, prompts: list[list[int]], output_len: int, temperature: float = 0.0
) -> dict[str, Any]:
    engine = llm.engine
    before = engine.stats()
    start = time.perf_counter()
    params = (
        SamplingParams(temperature=temperature, max_tokens=output_len)
        if temperature > 0
        else greedy(output_len)
    )
    results = llm.generate(prompts, params)
    seconds = time.perf_counter() - start
    after = engine.stats()
    tokens = [c.token_ids for r in results for c in r.choices]
    drafted = after.spec_draft_tokens - before.spec_draft_tokens
    accepted = after.spec_accepted_tokens - before.spec_accepted_tokens
    total = sum(len(t) for t in tokens)
    return {
        "tokens": tokens,
        "output_tokens": total,
        "seconds": seconds,
        "drafted": drafted,
        "accepted": accepted,
    }


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="conveyor bench speculative", description=__doc__)
    p.add_argument("--model", default=None, help="model (default: the bundled SmolLM2)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: auto)")
    p.add_argument(
        "--speculative-config",
        default='{"method": "ngram", "num_speculative_tokens": 4}',
        help="vLLM's JSON for the speculative engine",
    )
    p.add_argument("--workloads", default="copy,code,free", help="comma-separated")
    p.add_argument("--concurrency", default="1,8", help="comma-separated request counts")
    p.add_argument("--output-len", type=int, default=96, help="most tokens per request")
    p.add_argument("--rounds", type=int, default=2, help="plain/speculative pairs per point")
    p.add_argument(
        "--temperature", type=float, default=0.0, help="0: greedy; above: unseeded sampling"
    )
    p.add_argument("--json-out", type=Path, default=None, help="append the JSON lines here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    knobs: dict[str, Any] = {"device": args.device, "dtype": args.dtype}
    engines = {
        "plain": LLM(args.model, **knobs),
        "speculative": LLM(args.model, speculative_config=args.speculative_config, **knobs),
    }
    emit = JsonLines(args.json_out)
    for llm in engines.values():  # warm-up
        llm.generate(workload(llm, "copy", 2), greedy(16))
    for name in args.workloads.split(","):
        for n in (int(c) for c in args.concurrency.split(",")):
            runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in engines}
            for _ in range(args.rounds):
                for mode, llm in engines.items():
                    runs[mode].append(
                        run_once(llm, workload(llm, name, n), args.output_len, args.temperature)
                    )
            rate = {
                mode: statistics.fmean(r["output_tokens"] / r["seconds"] for r in rs)
                for mode, rs in runs.items()
            }
            spec = runs["speculative"]
            drafted = sum(r["drafted"] for r in spec)
            accepted = sum(r["accepted"] for r in spec)
            emit(
                {
                    "bench": "speculative",
                    "workload": name,
                    "concurrency": n,
                    "output_len": args.output_len,
                    "plain_tok_s": round(rate["plain"], 2),
                    "speculative_tok_s": round(rate["speculative"], 2),
                    "speculative_over_plain": round(rate["speculative"] / rate["plain"], 3),
                    "acceptance_rate": round(accepted / drafted, 3) if drafted else None,
                    "accepted_per_output_token": round(
                        accepted / max(1, sum(r["output_tokens"] for r in spec)), 3
                    ),
                    "temperature": args.temperature,
                    "identical": all(
                        a["tokens"] == b["tokens"] for a, b in zip(runs["plain"], spec, strict=True)
                    )
                    if args.temperature == 0
                    else None,
                    "device": str(engines["plain"].engine.device),
                }
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
