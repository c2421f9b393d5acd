"""The one place that picks an attention backend (and with it the fused ops) for a device."""

from __future__ import annotations

import logging

import torch

from kernels.attention import AttentionBackend
from kernels.torch_attention import TorchAttentionBackend
from kernels.triton_support import triton_unavailable_reason

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "triton")


def select_attention_backend(device: torch.device, name: str | None = None) -> AttentionBackend:
    """`name` forces a backend (settings: CONVEYOR_ATTENTION_BACKEND).

    Default: Triton kernels on CUDA, torch ops elsewhere. Forcing "triton" off
    CUDA works only under TRITON_INTERPRET=1 (tests); otherwise it raises,
    saying why, rather than silently running something else.
    """
    if name in (None, "", "auto"):
        if device.type != "cuda":
            return TorchAttentionBackend(device)
        reason = triton_unavailable_reason(device)
        if reason is None:
            return _triton(device)
        logger.warning("using the torch attention backend on %s: %s", device, reason)
        return TorchAttentionBackend(device)
    if name == "torch":
        return TorchAttentionBackend(device)
    if name == "triton":
        reason = triton_unavailable_reason(device)
        if reason is not None:
            raise RuntimeError(f"attention backend 'triton' cannot run on {device}: {reason}")
        return _triton(device)
    raise ValueError(f"attention backend {name!r} is not available; choose from {BACKENDS}")


def _triton(device: torch.device) -> AttentionBackend:
    # Imported here: the module imports triton, which the torch path must not need.
    from kernels.triton_attention import TritonAttentionBackend

    return TritonAttentionBackend(device)
