"""The one place that picks an attention backend for a device."""

from __future__ import annotations

import torch

from kernels.attention import AttentionBackend
from kernels.torch_attention import TorchAttentionBackend

BACKENDS = ("torch",)


def select_attention_backend(device: torch.device, name: str | None = None) -> AttentionBackend:
    """`name` forces a backend (settings: CONVEYOR_ATTENTION_BACKEND); default: torch ops."""
    if name in (None, "", "auto", "torch"):
        return TorchAttentionBackend(device)
    raise ValueError(f"attention backend {name!r} is not available; choose from {BACKENDS}")
