"""Beam search throughput: our engine against HF `generate(num_beams=k)` on the same weights.

HF runs static batches of `--hf-batch` equal-length prompts; our engine gets every
prompt at once (each search's beams are scored as sub-requests batched with the
other searches', engine/beam_requests.py). End tokens are barred until
`--output-len` (`min_tokens` / HF's `min_new_tokens`), so both sides search to the
same length and do the same work. Rounds alternate the two sides in one process;
each line reports beam tokens/s (prompts x width x output length per second) for
both, their ratio, and for how many prompts all k hypotheses equal HF's.

    python -m benchmarks.beam_search --width 2,4 --num-prompts 8
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers

from benchmarks.args import add_engine_args, int_list
from benchmarks.engine import make_prompts
from benchmarks.report import JsonLines
from engine.config import resolve_dtype
from engine.llm import LLM
from engine.loader import resolve_model
from engine.sampling_params import SamplingParams


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="conveyor bench beam", description=__doc__)
    add_engine_args(p)
    p.add_argument("--width", type=int_list, default=[2, 4], help="comma-separated beam widths")
    p.add_argument("--prompt-len", type=int, default=64, help="prompt tokens")
    p.add_argument("--output-len", type=int, default=32, help="tokens each hypothesis gets")
    p.add_argument("--num-prompts", type=int, default=8, help="searches per measurement")
    p.add_argument("--hf-batch", type=int, default=8, help="HF's static batch of prompts")
    p.add_argument("--rounds", type=int, default=2, help="alternating passes per width")
    p.add_argument("--json-out", type=Path, default=None, help="append the JSON lines here")
    return p.parse_args(argv)


def hf_beam_search(
    model: transformers.PreTrainedModel,
    prompts: list[list[int]],
    width: int,
    output_len: int,
    batch: int,
    device: torch.device,
) -> list[list[list[int]]]:
    """Each prompt's `width` hypotheses, best first, from HF in static batches."""
    found = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch):
            ids = torch.tensor(prompts[start : start + batch], device=device)
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                num_beams=width,
                num_return_sequences=width,
                do_sample=False,
                max_new_tokens=output_len,
                min_new_tokens=output_len,
                pad_token_id=model.config.vocab_size - 1,
            )
            rows = out[:, ids.shape[1] :].tolist()
            found += [rows[i : i + width] for i in range(0, len(rows), width)]
    return found


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    folder = resolve_model(args.model, args.data_dir).path
    emit = JsonLines(args.json_out)
    llm = LLM(str(folder), device=args.device, dtype=args.dtype, data_dir=args.data_dir)
    device, dtype = llm.engine.device, llm.engine.dtype
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=resolve_dtype(args.dtype, device)
    )
    hf = hf.to(device).eval()
    prompts = make_prompts(llm.tokenizer, args.num_prompts, args.prompt_len)
    warm = make_prompts(llm.tokenizer, 1, 8, start=args.num_prompts)
    for width in args.width:
        params = SamplingParams(
            n=width,
            use_beam_search=True,
            max_tokens=args.output_len,
            min_tokens=args.output_len,
        )
        llm.generate(warm, params)
        hf_beam_search(hf, warm, width, 2, 1, device)
        seconds: dict[str, list[float]] = {"ours": [], "hf": []}
        ours: list[list[list[int]]] = []
        theirs: list[list[list[int]]] = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            results = llm.generate(prompts, params)
            seconds["ours"].append(time.perf_counter() - start)
            ours = [[c.token_ids for c in r.choices] for r in results]
            start = time.perf_counter()
            theirs = hf_beam_search(hf, prompts, width, args.output_len, args.hf_batch, device)
            seconds["hf"].append(time.perf_counter() - start)
        tokens = args.num_prompts * width * args.output_len
        rate = {side: tokens / statistics.fmean(s) for side, s in seconds.items()}
        line: dict[str, Any] = {
            "bench": "beam_search",
            "width": width,
            "prompt_len": args.prompt_len,
            "output_len": args.output_len,
            "num_prompts": args.num_prompts,
            "hf_batch": args.hf_batch,
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "ours_tok_s": round(rate["ours"], 1),
            "hf_tok_s": round(rate["hf"], 1),
            "ours_over_hf": round(rate["ours"] / rate["hf"], 3),
            "prompts_matching_hf": sum(a == b for a, b in zip(ours, theirs, strict=True)),
        }
        emit(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
