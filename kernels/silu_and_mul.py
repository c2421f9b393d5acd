"""SiLU(gate) * up over the fused gate/up projection (torch path)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [T, 2 * I] -> [T, I]; the multiply reuses SiLU's output buffer."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate).mul_(up)
