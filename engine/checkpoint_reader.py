"""Which files of a model folder hold its weights, and their tensors one at a time.

Safetensors first (memory-mapped, headers readable without the data). A folder with
none falls back to PyTorch's pickled `pytorch_model*.bin`, as vLLM does: many older
hub models ship only those. They are read with torch.load's `weights_only`
unpickler, which builds tensors and plain containers and refuses anything else, so a
checkpoint cannot run code; memory-mapped where the file's format allows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open

SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_SUFFIX = ".bin"


def checkpoint_files(folder: Path) -> list[Path]:
    """The transformers-format weight files of a model folder: those its index names,
    or every safetensors file but a Mistral repo's `consolidated*` copy (the same
    weights under Mistral's own names); with no safetensors, `pytorch_model*.bin`."""
    files = _indexed(folder / SAFETENSORS_INDEX) or [
        f for f in sorted(folder.glob("*.safetensors")) if not f.name.startswith("consolidated")
    ]
    if not files:
        files = _indexed(folder / PICKLE_INDEX) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"no .safetensors (or pytorch_model*.bin) files in {folder}")
    return files


def is_pickled(file: Path) -> bool:
    return file.suffix == PICKLE_SUFFIX


def read_tensors(
    files: list[Path], wanted: Callable[[str], bool] = lambda _: True
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, CPU tensor) for every tensor of `files` whose name is `wanted`."""
    for file in files:
        if is_pickled(file):
            state = _load_pickled(file)
            for name in [n for n in state if wanted(n)]:
                yield name, state.pop(name)
            del state
            continue
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                if wanted(name):
                    yield name, handle.get_tensor(name)


def _indexed(index: Path) -> list[Path]:
    if not index.is_file():
        return []
    names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return [index.parent / name for name in names]


def _load_pickled(file: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        # Saved in torch's legacy (pre-1.6, non-zip) format, which cannot be mapped.
        state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise ValueError(f"{file}: not a state dict of tensors")
    return state
