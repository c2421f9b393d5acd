"""GELU(gate) * up over the fused gate/up projection, GELU in its tanh form (torch path).

Gemma's MLP (`gelu_pytorch_tanh`): the same fused gate/up layout as
SiLU-and-mul, another activation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gelu_tanh_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [T, 2 * I] -> [T, I]; the multiply reuses GELU's output buffer."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.gelu(gate, approximate="tanh").mul_(up)
