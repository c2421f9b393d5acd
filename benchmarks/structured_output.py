"""What a structured-output constraint costs the engine: the same requests, free and constrained.

Both runs use one warm engine, the same chat prompts ("list cities as JSON")
and the same concurrencies, interleaved so machine noise hits both alike. The
constraint is a JSON schema for a long array of objects (`minItems` keeps the
grammar open for the whole `--output-len`), so every step of every sequence
computes a mask. The figure that matters is the decode step time with the full
batch running, constrained over free; `mask_ms_per_step` is the mean time per
step spent filling the masks (the llguidance part, on the CPU).

    python -m benchmarks.structured_output --concurrency 1,16,64 --output-len 64
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import engine.model_runner as model_runner
from benchmarks.report import JsonLines
from engine.llm import LLM, greedy
from engine.sampling_params import SamplingParams
from engine.structured_output import StructuredOutput

CITIES = {
    "type": "array",
    "minItems": 50,
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 40},
            "country": {"type": "string", "maxLength": 40},
            "population": {"type": "integer", "minimum": 0, "maximum": 100_000_000},
        },
        "required": ["name", "country", "population"],
        "additionalProperties": False,
    },
}


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="conveyor bench structured", description=__doc__)
    p.add_argument("--model", default=None, help="model (default: the bundled SmolLM2)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: auto)")
    p.add_argument("--concurrency", default="1,16,64", help="comma-separated request counts")
    p.add_argument("--output-len", type=int, default=64, help="generated tokens per request")
    p.add_argument("--rounds", type=int, default=2, help="free/constrained pairs per concurrency")
    p.add_argument("--json-out", type=Path, default=None, help="append the JSON lines here")
    return p.parse_args(argv)


class MaskTimer:
    """Wraps the model runner's fill_bitmask to add up the seconds spent in it."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._inner = model_runner.fill_bitmask

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        start = time.perf_counter()
        try:
            return self._inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def prompts(llm: LLM, count: int, start: int) -> list[list[int]]:
    return [
        llm.tokenizer.apply_chat_template(
            [{"role": "user", "content": f"List {50 + i} cities as JSON objects."}],
            add_generation_prompt=True,
        )
        for i in range(start, start + count)
    ]


def run_once(
    llm: LLM, batch: list[list[int]], params: SamplingParams, timer: MaskTimer
) -> dict[str, Any]:
    """Every request at once; times the steps in which the whole batch decodes."""
    engine = llm.engine
    for i, prompt in enumerate(batch):
        engine.add_request(f"r{time.monotonic_ns()}-{i}", prompt, params)
    full_steps: list[float] = []
    num_steps = 0
    tokens = 0
    timer.seconds = 0.0
    start = time.perf_counter()
    while engine.has_unfinished():
        before = engine.stats()
        t0 = time.perf_counter()
        outs = engine.step()
        dt = time.perf_counter() - t0
        num_steps += 1
        produced = sum(len(c.token_ids) for o in outs for c in o.outputs)
        tokens += produced
        if before.num_waiting == 0 and before.num_running == produced == len(batch):
            full_steps.append(dt)
    seconds = time.perf_counter() - start
    return {
        "output_tokens": tokens,
        "output_tok_s": round(tokens / seconds, 2),
        "full_batch_decode_step_ms": (
            round(1e3 * statistics.median(full_steps), 3) if full_steps else None
        ),
        "mask_ms_per_step": round(1e3 * timer.seconds / max(1, num_steps), 3),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    knobs = {"device": args.device, "dtype": args.dtype}
    llm = LLM(args.model, **knobs)
    timer = MaskTimer()
    model_runner.fill_bitmask = timer  # type: ignore[assignment]
    emit = JsonLines(args.json_out)
    constraint = StructuredOutput.json_schema(CITIES)
    modes = {
        "free": greedy(args.output_len, ignore_eos=True),
        "json_schema": greedy(args.output_len, ignore_eos=True, structured_output=constraint),
    }
    llm.generate(prompts(llm, 2, 0), modes["json_schema"])  # warm-up, and compiles the schema
    next_prompt = 2
    for n in (int(c) for c in args.concurrency.split(",")):
        results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
        for _ in range(args.rounds):
            batch = prompts(llm, n, next_prompt)
            next_prompt += n
            for mode, params in modes.items():
                results[mode].append(run_once(llm, batch, params, timer))
        for mode, runs in results.items():
            steps = [r["full_batch_decode_step_ms"] for r in runs if r["full_batch_decode_step_ms"]]
            emit(
                {
                    "bench": "structured_output",
                    "mode": mode,
                    "concurrency": n,
                    "output_len": args.output_len,
                    "output_tok_s": round(statistics.fmean(r["output_tok_s"] for r in runs), 2),
                    "full_batch_decode_step_ms": (
                        round(statistics.fmean(steps), 3) if steps else None
                    ),
                    "mask_ms_per_step": round(
                        statistics.fmean(r["mask_ms_per_step"] for r in runs), 3
                    ),
                    "device": str(llm.engine.device),
                }
            )
        free, constrained = (
            emit.lines[-2]["full_batch_decode_step_ms"],
            emit.lines[-1]["full_batch_decode_step_ms"],
        )
        if free and constrained:
            emit(
                {
                    "bench": "structured_output",
                    "concurrency": n,
                    "constrained_over_free_step": round(constrained / free, 3),
                }
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
