"""RMSNorm with the residual add fused in (torch path; the Triton kernel mirrors it).

`residual` is updated in place to `x + residual`, like vLLM's
fused_add_rms_norm: one buffer carries the residual stream through all
layers instead of a fresh tensor per add. The arithmetic follows HF's
LlamaRMSNorm op for op (fp32 statistics), so greedy output stays identical.
fp32 weights on a 16-bit stream (Gemma's, `1 + w` folded in) multiply before
the one rounding, as HF's Gemma3RMSNorm does; weights in the stream's dtype
multiply after it, as Llama's does.
"""

from __future__ import annotations

import torch


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (normed, residual) where residual = x + residual (in place) or x."""
    if residual is None:
        residual = x
    else:
        residual.add_(x)
    h = residual.float()
    scale = h.pow(2).mean(-1, keepdim=True).add_(eps).rsqrt_()
    if h.dtype == residual.dtype:
        return weight * (h * scale), residual
    if weight.dtype != residual.dtype:
        return (weight * (h * scale)).to(residual.dtype), residual
    return weight * (h * scale).to(residual.dtype), residual
