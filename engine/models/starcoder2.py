"""StarCoder2 (3B, 7B, 15B): BigCode's code models.

The Llama layer wired with torch's LayerNorm (a weight and a bias) before
attention and the MLP and as the final norm, biases on every projection, and a
plain MLP, `c_proj(gelu_tanh(c_fc(x)))`, with no gate; every layer slides over
its window (4096) as the config says.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional

from engine.config import ModelConfig
from engine.models.layer_norm import LayerNorm
from engine.models.linear import Linear
from engine.models.llama import Attention, LlamaForCausalLM
from kernels.attention import AttentionBackend
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


class Starcoder2DecoderLayer(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        ops: FusedOps,
        window: int | None = None,
        rotates: bool = True,
        sparse: bool = False,
    ) -> None:
        super().__init__()
        if sparse:
            raise ValueError("StarCoder2 has no experts")
        size, eps = config.hidden_size, config.layer_norm_eps
        self.input_layernorm = LayerNorm(size, eps, bias=True)
        self.self_attn = Attention(config, ops, window, rotates)
        self.post_attention_layernorm = LayerNorm(size, eps, bias=True)
        self.mlp = PlainMLP(config, ops)

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor],
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        backend: AttentionBackend,
        metadata: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, residual = self.input_layernorm(hidden, residual)
        h = self.self_attn(h, rope, kv_cache, backend, metadata)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


class Starcoder2ForCausalLM(LlamaForCausalLM):
    decoder_layer = Starcoder2DecoderLayer

    def __init__(self, config: ModelConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.norm = LayerNorm(  # type: ignore[assignment]
            config.hidden_size, config.layer_norm_eps, bias=True
        )
