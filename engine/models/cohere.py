"""Cohere's Command R / Aya (`CohereForCausalLM`) and Command R7B / Command A
(`Cohere2ForCausalLM`): one LayerNorm feeding attention and the MLP side by side.

Each layer normalises the stream once (a mean-centred LayerNorm with no bias,
in fp32) and adds both sublayers' outputs to it: x + attn(ln(x)) + mlp(ln(x)),
summed in that order as transformers sums it. Queries and keys turn in
adjacent pairs (the Llama loader reorders their rows for the half-split
kernels: engine/interleaved_rope.py); Command R7B's and Command A's layers slide
three in four, and only those rotate (the full-attention layers use no
positions). Logits are multiplied by `logit_scale` (`ModelConfig.logit_scale`)
and the LM head is the embedding table. Command R+ (`use_qk_norm`) norms each
query and key head with its own LayerNorm weights before they turn
(`HeadLayerNorm`; the interleaved-rotation reorder takes their columns along).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from engine.config import ModelConfig
from engine.models.layer_norm import HeadLayerNorm, LayerNorm
from engine.models.llama import Attention, LlamaForCausalLM
from engine.models.mlp import MLP
from kernels.attention import AttentionBackend
from kernels.fused_ops import FusedOps


class CohereAttention(Attention):
    @staticmethod
    def make_qk_norm(config: ModelConfig, ops: FusedOps, heads: int) -> nn.Module:
        return HeadLayerNorm(heads, config.head_dim, config.layer_norm_eps)


class CohereDecoderLayer(nn.Module):
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
            raise ValueError("Cohere's models have no experts")
        self.input_layernorm = LayerNorm(config.hidden_size, config.layer_norm_eps, fp32=True)
        self.self_attn = CohereAttention(config, ops, window, rotates)
        self.mlp = MLP(config, ops)

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor],
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        backend: AttentionBackend,
        metadata: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the MLP's output apart from the stream plus attention's, so the next
        layer's add sums stream + attention + MLP in transformers' order."""
        h, stream = self.input_layernorm(hidden, residual)
        attention = self.self_attn(h, rope, kv_cache, backend, metadata)
        return self.mlp(h), stream + attention


class CohereForCausalLM(LlamaForCausalLM):
    decoder_layer = CohereDecoderLayer

    @staticmethod
    def make_final_norm(config: ModelConfig, ops: FusedOps) -> nn.Module:
        return LayerNorm(config.hidden_size, config.layer_norm_eps, fp32=True)
