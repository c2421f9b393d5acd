"""Quantized copies of a random model for the checkpoint-format tests (FP8, MXFP4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from engine.llm import LLM, greedy


def write_variants(
    source: Path,
    variants: dict[Path, tuple[dict[str, torch.Tensor], dict[str, Any] | None]],
) -> None:
    """Each folder gets `source`'s files (linked) with its own weights, and `source`'s
    config with that quantization_config (None: none)."""
    config = json.loads((source / "config.json").read_text())
    for folder, (weights, quantization) in variants.items():
        folder.mkdir()
        for file in source.iterdir():
            if file.name not in ("config.json", "model.safetensors"):
                (folder / file.name).symlink_to(file)
        save_file(weights, folder / "model.safetensors")
        written = (
            config if quantization is None else {**config, "quantization_config": quantization}
        )
        (folder / "config.json").write_text(json.dumps(written))


def assert_same_outputs(quantized: Path, reference: Path) -> None:
    """Token for token and logprob for logprob (prompts' too), the two folders' models."""
    torch.manual_seed(5)
    prompts = [torch.randint(3, 49152, (n,)).tolist() for n in (6, 40)]
    params = greedy(12, min_tokens=12, logprobs=3, prompt_logprobs=3)
    results = []
    for folder in (quantized, reference):
        llm = LLM(str(folder), kv_cache_memory=64 << 20)
        results.append(llm.generate(prompts, params))
    for ours, theirs in zip(*results, strict=True):
        assert ours.token_ids == theirs.token_ids
        logprobs = ours.choices[0].logprobs
        assert logprobs and logprobs == theirs.choices[0].logprobs
        assert ours.prompt_logprobs == theirs.prompt_logprobs
