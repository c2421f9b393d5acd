"""Random-weight LoRA adapters in PEFT's folder format, for tests and benchmarks.

What an adapter costs depends on its rank and the projections it trains, not
on its values, and no trained adapter can be downloaded here; so this writes
the files PEFT's `save_pretrained` writes (`adapter_config.json`,
`adapter_model.safetensors` with PEFT's key names) for a base model folder.
PEFT itself is not needed (tests load these folders with PEFT as the oracle).

    python -m benchmarks.random_lora OUT --base MODEL_DIR --rank 16
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from engine.config import ModelConfig
from engine.lora_adapter import (
    PROJECTION_BLOCKS,
    PROJECTIONS,
    UNFUSED_PROJECTIONS,
    projection_shapes,
)

# PEFT's default targets for Llama-family models.
PEFT_DEFAULT_TARGETS = ("q_proj", "v_proj")


def build_random_lora(
    folder: Path,
    base: Path,
    rank: int = 8,
    alpha: float = 16.0,
    targets: Sequence[str] = UNFUSED_PROJECTIONS,
    init_std: float = 0.1,
    seed: int = 0,
    use_rslora: bool = False,
    alpha_pattern: dict[str, float] | None = None,
    rank_pattern: dict[str, int] | None = None,
) -> Path:
    """Write an adapter for the model in `base` training `targets` on every layer.

    `rank_pattern` / `alpha_pattern` map a projection name to its own rank / alpha,
    as PEFT's patterns do."""
    config = ModelConfig.from_folder(base)
    shapes = projection_shapes(config)
    unknown = sorted(set(targets) - set(PROJECTIONS))
    if unknown:
        raise ValueError(f"unknown target modules: {unknown}")
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(config.num_layers):
        for projection in targets:
            in_features, out_features = shapes[projection]
            r = (rank_pattern or {}).get(projection, rank)
            prefix = (
                f"base_model.model.model.layers.{layer}."
                f"{PROJECTION_BLOCKS[projection]}.{projection}"
            )
            tensors[f"{prefix}.lora_A.weight"] = (
                torch.randn(r, in_features, generator=generator) * init_std
            )
            tensors[f"{prefix}.lora_B.weight"] = (
                torch.randn(out_features, r, generator=generator) * init_std
            )
    settings: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base),
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": sorted(targets),
        "bias": "none",
        "use_rslora": use_rslora,
        "use_dora": False,
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "rank_pattern": dict(rank_pattern or {}),
        "alpha_pattern": dict(alpha_pattern or {}),
        "inference_mode": True,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(folder / "adapter_model.safetensors")
    )
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.random_lora",
        description="Write a random-weight PEFT LoRA adapter folder for a base model folder.",
    )
    p.add_argument("out", type=Path, help="folder to write (created)")
    p.add_argument("--base", type=Path, required=True, help="the base model's HF folder")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument(
        "--targets", default=",".join(UNFUSED_PROJECTIONS), help="comma-separated projections"
    )
    p.add_argument("--init-std", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    build_random_lora(
        args.out,
        args.base,
        rank=args.rank,
        alpha=args.alpha,
        targets=[t for t in args.targets.split(",") if t],
        init_std=args.init_std,
        seed=args.seed,
    )
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
