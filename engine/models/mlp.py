"""A gated MLP: down(act(gate) * up), gate and up fused into one matmul.

The dense MLP of every decoder layer, and the shared expert a Qwen2-MoE layer
runs on every token next to its routed ones.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.config import ModelConfig
from engine.models.linear import Linear
from kernels.fused_ops import ActAndMul, FusedOps


def act_and_mul_for(config: ModelConfig, ops: FusedOps) -> ActAndMul:
    """The gated activation the config names (Gemma's GELU-tanh, else SiLU)."""
    return ops.gelu_tanh_and_mul if config.hidden_activation == "gelu_tanh" else ops.silu_and_mul


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, ops: FusedOps, intermediate_size: int = 0) -> None:
        """`intermediate_size`: the MLP's width where it is not the config's."""
        super().__init__()
        self.act_and_mul = act_and_mul_for(config, ops)
        self.intermediate_size = intermediate_size or config.intermediate_size
        self.gate_up_proj = Linear(
            config.hidden_size, 2 * self.intermediate_size, False, ops.linear
        )
        self.down_proj = Linear(self.intermediate_size, config.hidden_size, False, ops.linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_and_mul(self.gate_up_proj(x)))
