"""Reading a new checkpoint's weights into a serving model in place: vLLM's "disk" weight
transfer backend, for an RL loop whose trainer writes each step's weights to a folder
every inference worker can read.

The folder is built into a second model on the host, exactly as the served one was
built (the same config, dtype, fused layouts and quantization), then each tensor is
copied into the served model's tensor of the same name. Copying, rather than swapping
storage, keeps every address where it was, so recorded decode CUDA graphs stay valid,
and a folder that does not fit (another architecture, other shapes) is refused before
any weight changes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from engine.sleep_mode import trim_host_heap, weight_tensors


def checkpoint_folder(path: str) -> Path:
    """The folder `path` names, as vLLM's disk backend takes it: absolute, a directory,
    holding safetensors files. ValueError otherwise."""
    if not isinstance(path, str) or not path:
        raise ValueError("`path` must be a non-empty absolute local directory")
    if not os.path.isabs(path):
        raise ValueError(f"`path` must be an absolute local directory, not {path!r}")
    folder = Path(os.path.abspath(path))
    if not folder.is_dir():
        raise ValueError(f"the checkpoint path must be a local directory: {folder}")
    if not any(f.is_file() for f in folder.glob("*.safetensors")):
        raise ValueError(f"the checkpoint directory holds no safetensors files: {folder}")
    return folder


def copy_weights_in(model: torch.nn.Module, fresh: torch.nn.Module) -> int:
    """Copy every tensor of `fresh` into `model`'s tensor of the same name; the bytes
    copied. Checks all names, shapes and dtypes first, so a mismatch changes nothing."""
    ours = dict(weight_tensors(model))
    theirs = dict(weight_tensors(fresh))
    if ours.keys() != theirs.keys():
        differ = sorted(ours.keys() ^ theirs.keys())[:5]
        raise ValueError(f"the checkpoint builds another model than the one served: {differ}")
    for name, tensor in ours.items():
        other = theirs[name]
        if other.shape != tensor.shape or other.dtype != tensor.dtype:
            raise ValueError(
                f"the checkpoint's {name} is {tuple(other.shape)} {other.dtype}, the served "
                f"model's {tuple(tensor.shape)} {tensor.dtype}"
            )
    copied = 0
    with torch.no_grad():
        for name, tensor in ours.items():
            tensor.copy_(theirs[name])
            copied += tensor.numel() * tensor.element_size()
    if any(t.is_cuda for t in ours.values()):
        torch.cuda.synchronize()
    return copied


def available_host_memory() -> int | None:
    """Bytes the kernel says a new allocation can have (MemAvailable); None off Linux."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_host_memory(model: torch.nn.Module, available: int | None) -> None:
    """Refuse an update whose host-side build would not fit: a worker killed for memory
    mid-update reports nothing, and would be killed again by every restart that reads
    the same folder. On a CPU the built copy sits next to the served one."""
    if available is None:
        return
    needed = sum(t.numel() * t.element_size() for _, t in weight_tensors(model))
    if needed * 1.1 > available:
        raise ValueError(
            f"reading the checkpoint needs about {needed / (1 << 30):.1f} GiB of host memory "
            f"for a second copy of the weights; {available / (1 << 30):.1f} GiB is available"
        )


def update_weights_from(
    model: torch.nn.Module,
    path: str,
    build: Callable[[Path], torch.nn.Module],
    available: Callable[[], int | None] = available_host_memory,
) -> Path:
    """Build the checkpoint at `path` on the host with `build` and copy it into `model`;
    the folder it read."""
    folder = checkpoint_folder(path)
    check_host_memory(model, available())
    try:
        fresh = build(folder)
    except (RuntimeError, KeyError) as exc:  # a tensor of another shape, a missing one
        raise ValueError(f"{folder} does not fit the served model: {exc}") from exc
    try:
        copy_weights_in(model, fresh)
    finally:
        del fresh
        trim_host_heap()  # the build's memory, back to the system
    return folder
