"""A trainer's later checkpoint of a model folder, for the weight-update tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def later_step(folder: Path, into: Path, seed: int) -> Path:
    """A copy of the model folder at `into` whose every weight moved by seeded noise."""
    shutil.copytree(folder, into)
    generator = torch.Generator().manual_seed(seed)
    for file in into.glob("*.safetensors"):
        tensors = load_file(file)
        moved = {
            name: t + 0.3 * torch.randn(t.shape, generator=generator).to(t.dtype)
            for name, t in tensors.items()
        }
        save_file(moved, file, metadata={"format": "pt"})
    return into
