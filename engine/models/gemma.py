"""Gemma 2 and 3 (text): the Llama graph with a norm on each side of attention and of
the MLP.

Everything else they change is a config switch the Llama model applies
(engine/config.py): a GELU-tanh MLP, scaled embeddings, `1 + w` norm weights,
query_pre_attn_scalar, sliding windows on some layers, soft-capped logits;
Gemma 2's soft-capped attention scores; Gemma 3's per-head query/key norms and
separate rotation for its sliding layers. Only the layer's wiring differs: each
sublayer's output is normalised before it joins the residual stream. (Gemma 1
is wired like Llama and runs as LlamaForCausalLM with the same switches.)
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


class GemmaDecoderLayer(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        ops: FusedOps,
        window: int | None = None,
        rotates: bool = True,
        sparse: bool = False,
    ) -> None:
        super().__init__()
        size, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = RMSNorm(size, eps, ops)
        if sparse:
            raise ValueError("Gemma has no experts")
        self.self_attn = Attention(config, ops, window, rotates)
        self.post_attention_layernorm = RMSNorm(size, eps, ops)
        self.pre_feedforward_layernorm = RMSNorm(size, eps, ops)
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
        """`hidden` is the previous layer's normalised MLP output, not yet added to
        `residual`: each add is fused into the next norm, as in the Llama layer."""
        h, residual = self.input_layernorm(hidden, residual)
        h = self.self_attn(h, rope, kv_cache, backend, metadata)
        h, _ = self.post_attention_layernorm(h)
        h, residual = self.pre_feedforward_layernorm(h, residual)
        h, _ = self.post_feedforward_layernorm(self.mlp(h))
        return h, residual


class Gemma2ForCausalLM(LlamaForCausalLM):
    """Gemma 2, and Gemma 3's text model (engine/models/vision_language.py reads its
    checkpoints): sandwich-norm layers, sliding and full attention interleaved."""

    decoder_layer = GemmaDecoderLayer
