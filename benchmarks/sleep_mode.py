"""What sleep mode frees and what waking costs: memory given back, seconds to sleep and to
wake, and whether the woken engine answers as before.

For each level the engine answers a few greedy prompts, sleeps, wakes and
answers them again. Memory is the device's in use (CUDA: what the driver says
is taken, so memory another process may use now) or, on a CPU, this process's
resident set, read before sleeping, while asleep and after waking.

    python -m benchmarks.sleep_mode --levels 1,2
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.args import add_engine_args, int_list
from benchmarks.engine import make_prompts
from benchmarks.report import JsonLines, rounded
from engine.llm import LLM, greedy

GIB = 2**30


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="conveyor bench sleep", description=__doc__)
    add_engine_args(p)
    p.add_argument("--levels", type=int_list, default=[1, 2], help="comma-separated: 1,2")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=16)
    p.add_argument("--kv-cache-memory", type=int, default=None, help="bytes (default: auto)")
    p.add_argument("--json-out", type=Path, default=None, help="append the JSON lines here")
    return p.parse_args(argv)


def memory_in_use(device: torch.device) -> int:
    """Bytes taken: on the GPU (by anyone), or this process's resident set on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        free, total = torch.cuda.mem_get_info(device)
        return total - free
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if any(level not in (1, 2) for level in args.levels):
        raise SystemExit("--levels: 1 and/or 2")
    sizes = {} if args.kv_cache_memory is None else {"kv_cache_memory": args.kv_cache_memory}
    llm = LLM(args.model, device=args.device, dtype=args.dtype, data_dir=args.data_dir, **sizes)
    engine = llm.engine
    prompts = make_prompts(llm.tokenizer, args.prompts, args.prompt_len)
    params = greedy(args.output_len)

    def answers() -> list[list[int]]:
        return [r.choices[0].token_ids for r in llm.generate(prompts, params)]

    want = answers()
    emit = JsonLines(args.json_out)
    for level in args.levels:
        before = memory_in_use(engine.device)
        start = time.perf_counter()
        engine.sleep(level)
        slept = time.perf_counter() - start
        asleep = memory_in_use(engine.device)
        start = time.perf_counter()
        engine.wake_up()
        woke = time.perf_counter() - start
        after = memory_in_use(engine.device)
        line: dict[str, Any] = {
            "bench": "sleep",
            "level": level,
            "device": str(engine.device),
            "dtype": str(engine.dtype).removeprefix("torch."),
            "in_use_gib": rounded(before / GIB),
            "asleep_gib": rounded(asleep / GIB),
            "freed_gib": rounded((before - asleep) / GIB),
            "woken_gib": rounded(after / GIB),
            "sleep_s": rounded(slept),
            "wake_s": rounded(woke),
            "greedy_matches": answers() == want,
        }
        emit(line)
    return 0 if all(line["greedy_matches"] for line in emit.lines) else 1


if __name__ == "__main__":
    raise SystemExit(main())
