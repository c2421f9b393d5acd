"""Post-norm layers: OLMo 2, OLMo 3 and EXAONE 4.

Each sublayer reads the residual stream itself (no norm before it) and its
output is normalised before it joins the stream: x + norm(attn(x)), then
x + norm(mlp(x)). The model's final norm still closes the stack. The query
and key norms (OLMo's one over all query heads and one over all key heads,
EXAONE 4's per head) are the attention's config switches (`qk_norm`,
`qk_norm_across_heads`); sliding layers, their own rotation and EXAONE 4's
position-free full layers are the Llama model's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from engine.config import ModelConfig
from engine.models.llama import Attention, LlamaForCausalLM, RMSNorm
from engine.models.mlp import MLP
from kernels.attention import AttentionBackend
from kernels.fused_ops import FusedOps


class Olmo2DecoderLayer(nn.Module):
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
            raise ValueError("OLMo 2 has no experts")
        size, eps = config.hidden_size, config.rms_norm_eps
        self.self_attn = Attention(config, ops, window, rotates)
        self.post_attention_layernorm = RMSNorm(size, eps, ops)
        self.mlp = MLP(config, ops)
        self.post_feedforward_layernorm = RMSNorm(size, eps, ops)

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor],
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        backend: AttentionBackend,
        metadata: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like every layer here, returns its last sublayer's output apart from the
        stream it joins (the next layer, or the final norm, adds them)."""
        stream = hidden if residual is None else residual + hidden
        h, _ = self.post_attention_layernorm(
            self.self_attn(stream, rope, kv_cache, backend, metadata)
        )
        stream = stream + h
        h, _ = self.post_feedforward_layernorm(self.mlp(stream))
        return h, stream


class Olmo2ForCausalLM(LlamaForCausalLM):
    decoder_layer = Olmo2DecoderLayer
