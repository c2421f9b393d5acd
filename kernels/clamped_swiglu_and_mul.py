"""gpt-oss's clamped SwiGLU over the fused gate/up projection (torch path).

gate is clamped from above and up on both sides at `limit`, then
(up + 1) * gate * sigmoid(alpha * gate): the activation OpenAI trained
gpt-oss with, op for op as transformers computes it (in the input's dtype).
"""

from __future__ import annotations

import torch


def clamped_swiglu_and_mul(gate_up: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    """gate_up [T, 2 * I] (gate then up) -> [T, I]."""
    gate, up = gate_up.chunk(2, dim=-1)
    gate = gate.clamp(max=limit)
    up = up.clamp(min=-limit, max=limit)
    return (up + 1) * (gate * torch.sigmoid(gate * alpha))
