"""StarCoder2 (3B, 7B, 15B): BigCode's code models.

The Llama layer wired with torch's LayerNorm (a weight and a bias) before
attention and the MLP and as the final norm, biases on every projection, and a
plain MLP, `c_proj(gelu_tanh(c_fc(x)))`, with no gate; every layer slides over
its window (4096) as the config says.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from engine.config import ModelConfig
from engine.models.layer_norm import LayerNorm
from engine.models.linear import Linear
from engine.models.llama import DecoderLayer, LlamaForCausalLM
from kernels.fused_ops import FusedOps


class PlainMLP(nn.Module):
    """c_fc, the config's activation (its releases': GELU's tanh form), c_proj, each
    projection with its bias."""

    def __init__(self, config: ModelConfig, ops: FusedOps) -> None:
        super().__init__()
        hidden, inter = config.hidden_size, config.intermediate_size
        self.c_fc = Linear(hidden, inter, True, ops.linear)
        self.c_proj = Linear(inter, hidden, True, ops.linear)
        self.tanh_gelu = config.hidden_activation == "gelu_tanh"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        h = functional.gelu(h, approximate="tanh") if self.tanh_gelu else functional.silu(h)
        return self.c_proj(h)


class Starcoder2DecoderLayer(DecoderLayer):
    """Llama's layer (its config has no residual multiplier) with StarCoder2's parts."""

    @staticmethod
    def make_norm(config: ModelConfig, ops: FusedOps) -> nn.Module:
        return LayerNorm(config.hidden_size, config.layer_norm_eps, bias=True)

    @staticmethod
    def make_dense_mlp(config: ModelConfig, ops: FusedOps) -> nn.Module:
        return PlainMLP(config, ops)


class Starcoder2ForCausalLM(LlamaForCausalLM):
    decoder_layer = Starcoder2DecoderLayer

    @staticmethod
    def make_final_norm(config: ModelConfig, ops: FusedOps) -> nn.Module:
        return LayerNorm(config.hidden_size, config.layer_norm_eps, bias=True)
