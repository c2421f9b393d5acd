"""Embedding (or classification) throughput: our pooling runner against HF transformers
on the same weights.

HF runs the base model (`AutoModel`) over static batches of `--hf-batch`
prompts of equal length (no padding: its best case) and pools as the engine does
(the last token for a decoder, the first for an encoder, unless the model's
sentence-transformers files say otherwise);
our engine gets all prompts at once (`LLM.embed`), batching them as its token
budget allows. A sequence classifier (`*ForSequenceClassification`) is compared
with HF's `AutoModelForSequenceClassification` on its labels' probabilities
instead. Both run in one process, alternating rounds so machine noise
hits them alike; each line reports prompt tokens/s for both, their ratio, and
the largest difference between the two sides' vectors.

    python -m benchmarks.embeddings --prompt-len 32,256 --num-prompts 64
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers

from benchmarks.args import add_engine_args
from benchmarks.engine import make_prompts
from benchmarks.report import JsonLines
from engine.config import resolve_dtype
from engine.llm import LLM
from engine.loader import resolve_model
from engine.pooler_config import PoolingType


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="conveyor bench embed", description=__doc__)
    add_engine_args(p)
    p.add_argument("--prompt-len", default="32,256", help="comma-separated prompt lengths")
    p.add_argument("--num-prompts", type=int, default=64, help="prompts per measurement")
    p.add_argument("--hf-batch", type=int, default=16, help="HF's static batch size")
    p.add_argument("--rounds", type=int, default=2, help="alternating passes per length")
    p.add_argument("--json-out", type=Path, default=None, help="append the JSON lines here")
    return p.parse_args(argv)


def hf_embed(
    model: transformers.PreTrainedModel,
    prompts: list[list[int]],
    batch: int,
    device: torch.device,
    pooling: PoolingType = PoolingType.LAST,
) -> torch.Tensor:
    """Pooled (our engine's way: LAST, CLS or MEAN), normalised vectors from HF (a
    classifier's label probabilities), `batch` equal-length prompts a call."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch):
            ids = torch.tensor(prompts[start : start + batch], device=device)
            # By name: importing transformers' model classes here would import triton
            # before the kernel tests can set TRITON_INTERPRET.
            if type(model).__name__.endswith("ForSequenceClassification"):
                logits = model(ids).logits.float()
                probs = logits.sigmoid() if logits.shape[-1] == 1 else logits.softmax(-1)
                out.append(probs.cpu())
                continue
            hidden = model(ids).last_hidden_state
            pooled = {
                PoolingType.LAST: lambda h: h[:, -1],
                PoolingType.CLS: lambda h: h[:, 0],
                PoolingType.MEAN: lambda h: h.mean(dim=1),
            }[pooling](hidden)
            out.append(F.normalize(pooled.float(), dim=-1).cpu())
    return torch.cat(out)


def _hf_model(folder: Path, classifier: bool, dtype: torch.dtype) -> transformers.PreTrainedModel:
    kind = transformers.AutoModelForSequenceClassification if classifier else transformers.AutoModel
    model = kind.from_pretrained(folder, dtype=dtype)
    if classifier and model.config.pad_token_id is None:
        # HF's classifiers refuse batches without a pad id to find each row's last token
        # by; these batches are unpadded, so any id the prompts do not use will do.
        model.config.pad_token_id = model.config.vocab_size - 1
    return model


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    folder = resolve_model(args.model, args.data_dir).path
    emit = JsonLines(args.json_out)
    llm = LLM(
        str(folder),
        device=args.device,
        dtype=args.dtype,
        data_dir=args.data_dir,
        runner="pooling",
        # Every round embeds the same prompts again: cached prefixes would hide the work.
        enable_prefix_caching=False,
    )
    device, dtype = llm.engine.device, llm.engine.dtype
    classifier = llm.engine.model_config.is_classifier
    assert llm.engine.pooler_config is not None
    pooling = llm.engine.pooler_config.pooling_type
    hf = _hf_model(folder, classifier, resolve_dtype(args.dtype, device)).to(device).eval()
    llm.embed(make_prompts(llm.tokenizer, 2, 8))  # warm both sides up
    hf_embed(hf, make_prompts(llm.tokenizer, 2, 8), args.hf_batch, device, pooling)
    for prompt_len in (int(v) for v in args.prompt_len.split(",")):
        prompts = make_prompts(llm.tokenizer, args.num_prompts, prompt_len)
        seconds: dict[str, list[float]] = {"ours": [], "hf": []}
        ours = theirs = None
        for _ in range(args.rounds):
            start = time.perf_counter()
            ours = torch.stack([r.embedding for r in llm.embed(prompts)])  # type: ignore[misc]
            seconds["ours"].append(time.perf_counter() - start)
            start = time.perf_counter()
            theirs = hf_embed(hf, prompts, args.hf_batch, device, pooling)
            seconds["hf"].append(time.perf_counter() - start)
        tokens = args.num_prompts * prompt_len
        rate = {side: tokens / statistics.fmean(s) for side, s in seconds.items()}
        assert ours is not None and theirs is not None
        line: dict[str, Any] = {
            "bench": "classify" if classifier else "embed",
            "prompt_len": prompt_len,
            "num_prompts": args.num_prompts,
            "hf_batch": args.hf_batch,
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "ours_tok_s": round(rate["ours"], 1),
            "hf_tok_s": round(rate["hf"], 1),
            "ours_over_hf": round(rate["ours"] / rate["hf"], 3),
            "max_abs_diff": float((ours - theirs).abs().max()),
        }
        emit(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
