"""What reading a trainer's checkpoint into a serving engine costs (vLLM's disk weight
transfer, POST /update_weights): seconds per update, the bytes copied into the model,
and whether the engine then answers as one started on that folder.

The folder read defaults to the model's own (the same weights again: the cost without
a second engine to compare with); `--path` names a later step's folder of the same
model, and the answers are then compared with an engine started on it.

    python -m benchmarks.weight_update --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.args import add_engine_args
from benchmarks.engine import make_prompts
from benchmarks.report import JsonLines, rounded
from engine.llm import LLM, greedy
from engine.sleep_mode import weight_tensors

GIB = 2**30


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="conveyor bench weights", description=__doc__)
    add_engine_args(p)
    p.add_argument("--path", type=Path, default=None, help="the folder to read (default: own)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=16)
    p.add_argument("--kv-cache-memory", type=int, default=None, help="bytes (default: auto)")
    p.add_argument("--json-out", type=Path, default=None, help="append the JSON lines here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.repeats < 1:
        raise SystemExit("--repeats: at least 1")
    sizes = {} if args.kv_cache_memory is None else {"kv_cache_memory": args.kv_cache_memory}
    engine_args = dict(device=args.device, dtype=args.dtype, data_dir=args.data_dir, **sizes)
    llm = LLM(args.model, **engine_args)
    engine = llm.engine
    prompts = make_prompts(llm.tokenizer, args.prompts, args.prompt_len)
    params = greedy(args.output_len)

    def answers(of: LLM) -> list[list[int]]:
        return [r.choices[0].token_ids for r in of.generate(prompts, params)]

    folder = (args.path or engine.resolved.path).resolve()
    want = answers(llm) if args.path is None else answers(LLM(str(folder), **engine_args))
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        engine.update_weights(str(folder))
        seconds.append(time.perf_counter() - start)
    size = sum(t.numel() * t.element_size() for _, t in weight_tensors(engine.runner.model))
    median = statistics.median(seconds)
    emit = JsonLines(args.json_out)
    emit(
        {
            "bench": "weights",
            "device": str(engine.device),
            "dtype": str(engine.dtype).removeprefix("torch."),
            "own_folder": args.path is None,
            "weights_gib": rounded(size / GIB),
            "update_s": [rounded(s) for s in seconds],
            "median_s": rounded(median),
            "gib_per_s": rounded(size / GIB / median),
            "greedy_matches": answers(llm) == want,
        }
    )
    return 0 if emit.lines[0]["greedy_matches"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
