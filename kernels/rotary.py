"""Rotary position embedding in HF's rotate-half layout (torch path).

Queries and keys are rotated in one call: the model hands over the q+k part
of its fused QKV projection viewed as [tokens, heads + kv_heads, head_dim].
"""

from __future__ import annotations

import torch


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, D]; cos/sin [T, 1, D/2] for each token's position."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
