"""The Llama family (Llama, Llama 3, Mistral, Qwen2, Qwen3) over a flattened batch.

Tokens from many sequences arrive as one [T] vector with their positions; no
padding. Q/K/V and gate/up projections are fused into single matmuls (fewer,
larger GEMMs are what a CPU and a GPU both want); attention goes through the
backend interface so the model never sees the cache layout's details. The
other fused ops (RMSNorm, rotary, SiLU-and-mul) come from the `FusedOps` the
model is built with, bound once per module, so the model never names a kernel.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from engine.classifier_tokens import head_weight
from engine.config import ModelConfig, RopeConfig
from engine.fp8_checkpoint import SCALE_SUFFIX as FP8_SCALE_SUFFIX
from engine.interleaved_rope import half_split_checkpoint
from engine.kv_cache_scales import kv_scale_target, with_scale
from engine.models.embedding import embedding
from engine.models.linear import Linear
from engine.models.mlp import MLP
from engine.models.moe import EXPERT_KEY, EXPERT_PARTS, SparseMoE
from kernels.attention import AttentionBackend
from kernels.fused_ops import TORCH_OPS, FusedOps
from kernels.kv_cache_dtype import UNIT_SCALES

logger = logging.getLogger(__name__)


# A mixture-of-experts layer's router or expert matrix (Qwen3-MoE's "mlp", Mixtral's
# "block_sparse_moe").
class RMSNorm(nn.Module):
    """RMSNorm computed in fp32, as HF does, with the residual add fused in."""

    def __init__(self, size: int, eps: float, ops: FusedOps) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps
        self.rms_norm = ops.rms_norm

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rms_norm(x, self.weight, self.eps, residual)


def rope_inv_freq(rope: RopeConfig, head_dim: int, max_positions: int = 0) -> torch.Tensor:
    """Inverse frequencies, with Llama 3's, linear, YaRN or LongRoPE scaling applied.

    LongRoPE stretches each dimension by its short factor, or by its long one when the
    engine serves contexts past the original: chosen once for the served length, as
    vLLM does (transformers switches per call, recomputing the cache when a sequence
    crosses the original length)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    if rope.rope_type == "longrope":
        long = max_positions > rope.original_max_position_embeddings
        stretch = rope.long_factor if long else rope.short_factor
        if len(stretch) != head_dim // 2:
            raise ValueError(
                f"longrope lists {len(stretch)} factors for {head_dim // 2} rotated pairs"
            )
        return 1.0 / (torch.tensor(stretch, dtype=torch.float32) * rope.theta**exponents)
    inv_freq = 1.0 / (rope.theta**exponents)
    if rope.rope_type == "linear":
        return inv_freq / rope.factor
    if rope.rope_type == "yarn":
        return _yarn_inv_freq(rope, head_dim, inv_freq)
    if rope.rope_type == "llama3":
        old_len = rope.original_max_position_embeddings
        low_wavelen = old_len / rope.low_freq_factor
        high_wavelen = old_len / rope.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
        smooth = (old_len / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled)
    return inv_freq


def _yarn_inv_freq(rope: RopeConfig, head_dim: int, inv_freq: torch.Tensor) -> torch.Tensor:
    """YaRN: dimensions that turn fewer than `beta_slow` times over the original context
    are interpolated (divided by `factor`), those turning more than `beta_fast` times are
    kept, and a linear ramp blends the band between (the paper's "NTK-by-parts")."""

    def dimension(rotations: float) -> float:
        wavelengths = rope.original_max_position_embeddings / (rotations * 2 * math.pi)
        return head_dim * math.log(wavelengths) / (2 * math.log(rope.theta))

    low, high = dimension(rope.beta_fast), dimension(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # no band: a step instead of a ramp
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    kept = 1 - ramp
    return inv_freq / rope.factor * (1 - kept) + inv_freq * kept


def rope_attention_scale(rope: RopeConfig) -> float:
    """YaRN's and LongRoPE's scale on cos and sin (1 for the other rotations): it keeps
    attention's entropy steady as the context stretches."""
    if rope.rope_type not in ("yarn", "longrope"):
        return 1.0
    if rope.attention_factor is not None:
        return rope.attention_factor
    if rope.rope_type == "longrope":
        if rope.factor <= 1.0:
            return 1.0
        original = rope.original_max_position_embeddings
        return math.sqrt(1 + math.log(rope.factor) / math.log(original))

    def mscale(scale: float, weight: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * weight * math.log(scale) + 1.0

    if rope.mscale and rope.mscale_all_dim:
        return mscale(rope.factor, rope.mscale) / mscale(rope.factor, rope.mscale_all_dim)
    return mscale(rope.factor)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (HF's rotate-half layout) from a precomputed table."""

    def __init__(self, rope: RopeConfig, head_dim: int, max_positions: int) -> None:
        super().__init__()
        if torch.empty(0).is_meta:
            # The loader's skeleton: shapes only (rebuild_buffers computes the tables;
            # arithmetic on meta tensors would import torch._dynamo, ~2 s, for nothing).
            self.register_buffer("cos", torch.empty(max_positions, head_dim // 2), False)
            self.register_buffer("sin", torch.empty(max_positions, head_dim // 2), False)
            return
        inv_freq = rope_inv_freq(rope, head_dim, max_positions)
        positions = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        scale = rope_attention_scale(rope)
        self.register_buffer("cos", freqs.cos() * scale, persistent=False)
        self.register_buffer("sin", freqs.sin() * scale, persistent=False)

    def table(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin rows for this step's positions, gathered once and shared by all layers."""
        cos = self.cos[positions].unsqueeze(1).to(dtype)
        sin = self.sin[positions].unsqueeze(1).to(dtype)
        return cos, sin


class Attention(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        ops: FusedOps,
        window: int | None = None,
        rotates: bool = True,
    ) -> None:
        super().__init__()
        # A sliding-window layer's (Mistral v0.1, Qwen with use_sliding_window).
        self.window = window
        # False: a NoPE layer (SmolLM3's every fourth), whose queries and keys carry no
        # positions at all.
        self.rotates = rotates
        self.rotary_dim = config.rotary_dim
        self.apply_rotary = ops.apply_rotary
        self.rotary_in_fp32 = config.rotary_precision != "model"
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.q_size = config.num_heads * config.head_dim
        self.kv_size = config.num_kv_heads * config.head_dim
        self.scale = config.attention_scale or config.head_dim**-0.5
        # Gemma 2's: scores squashed to cap * tanh(score / cap) before the softmax.
        self.softcap = config.attention_softcap
        self.qkv_proj = Linear(
            config.hidden_size, self.q_size + 2 * self.kv_size, config.qkv_bias, ops.linear
        )
        self.o_proj = Linear(self.q_size, config.hidden_size, config.o_proj_bias, ops.linear)
        # gpt-oss's: each head's learned logit, one more key with no value in its softmax
        # (fp32 once loaded).
        self.sinks: nn.Parameter | None = None
        if config.attention_sinks:
            self.sinks = nn.Parameter(torch.zeros(config.num_heads))
        # Per head (Qwen3, Gemma 3), or across all heads at once (OLMo).
        self.qk_norm_across_heads = config.qk_norm_across_heads
        if config.qk_norm:
            self.q_norm = self.make_qk_norm(config, ops, config.num_heads)
            self.k_norm = self.make_qk_norm(config, ops, config.num_kv_heads)
        self.qk_norm = config.qk_norm
        # An FP8 KV cache's scales for this layer (kernels/kv_cache_dtype.py): the
        # checkpoint's calibrated ones where the loader finds them.
        self.kv_scales = UNIT_SCALES

    @staticmethod
    def make_qk_norm(config: ModelConfig, ops: FusedOps, heads: int) -> nn.Module:
        """The query (or key) norm over `heads` heads: an RMSNorm per head (Qwen3, Gemma 3)
        or across all of them at once (OLMo), called on [tokens, heads, head_dim] or
        [tokens, heads * head_dim]; a family may norm otherwise (Command R+)."""
        width = heads * config.head_dim if config.qk_norm_across_heads else config.head_dim
        return RMSNorm(width, config.rms_norm_eps, ops)

    def forward(
        self,
        hidden: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        backend: AttentionBackend,
        metadata: Any,
    ) -> torch.Tensor:
        qkv = self.qkv_proj(hidden)
        qk, v = qkv.split([self.q_size + self.kv_size, self.kv_size], dim=-1)
        if self.qk_norm_across_heads:
            q, k = qk.split([self.q_size, self.kv_size], dim=-1)
            qk = torch.cat((self.q_norm(q)[0], self.k_norm(k)[0]), dim=-1)
        # Queries and keys share the rotation: rotate them in one pass.
        qk = qk.view(-1, self.num_heads + self.num_kv_heads, self.head_dim)
        if self.qk_norm and not self.qk_norm_across_heads:
            q, k = qk.split([self.num_heads, self.num_kv_heads], dim=1)
            qk = torch.cat((self.q_norm(q)[0], self.k_norm(k)[0]), dim=1)
        if self.rotates and (self.rotary_dim or self.rotary_in_fp32):
            # Phi's partial rotation: the first rotary_dim of each head turn, the rest stay;
            # Cohere's and ERNIE's turn in fp32 and round once, as transformers does.
            part = qk[..., : self.rotary_dim or self.head_dim]
            if self.rotary_in_fp32:
                cos, sin = rope
                part.copy_(self.apply_rotary(part.float(), cos.float(), sin.float()))
            else:
                part.copy_(self.apply_rotary(part, *rope))
        elif self.rotates:
            qk = self.apply_rotary(qk, *rope)
        q, k = qk.split([self.num_heads, self.num_kv_heads], dim=1)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        out = backend.forward(
            q,
            k,
            v,
            kv_cache[0],
            kv_cache[1],
            metadata,
            self.scale,
            self.window,
            self.softcap,
            self.sinks,
            self.kv_scales,
        )
        return self.o_proj(out.reshape(-1, self.q_size))


class DecoderLayer(nn.Module):
    # A sparse layer's MLP: the mixture of experts this family routes through.
    sparse_mlp: type[nn.Module] = SparseMoE

    def __init__(
        self,
        config: ModelConfig,
        ops: FusedOps,
        window: int | None = None,
        rotates: bool = True,
        sparse: bool = False,
    ) -> None:
        super().__init__()
        self.input_layernorm = self.make_norm(config, ops)
        self.self_attn = Attention(config, ops, window, rotates)
        self.post_attention_layernorm = self.make_norm(config, ops)
        # A mixture of experts (engine/models/moe.py) or one dense MLP.
        self.mlp = self.sparse_mlp(config, ops) if sparse else self.make_dense_mlp(config, ops)
        # Granite's: each sublayer's output scaled before its residual add.
        self.residual_multiplier = config.residual_multiplier

    @staticmethod
    def make_norm(config: ModelConfig, ops: FusedOps) -> nn.Module:
        """The layer's norms (StarCoder2 wires LayerNorms the same way)."""
        return RMSNorm(config.hidden_size, config.rms_norm_eps, ops)

    @staticmethod
    def make_dense_mlp(config: ModelConfig, ops: FusedOps) -> nn.Module:
        return MLP(config, ops)

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
        if self.residual_multiplier != 1.0:
            h = h * self.residual_multiplier
        h, residual = self.post_attention_layernorm(h, residual)
        h = self.mlp(h)
        if self.residual_multiplier != 1.0:
            h = h * self.residual_multiplier
        return h, residual


class LlamaForCausalLM(nn.Module):
    """Llama / Mistral / Qwen2 / Qwen3 / Gemma: the same graph, differing only in config
    (bias, rope, window, Qwen3's per-head query/key norms, Gemma's embedding scale and
    norm weight offset). Gemma 2 and 3 (engine/models/gemma.py) swap the decoder layer
    and turn on their configs' other differences, which this class applies: logit and
    attention soft-capping, and a rotation of its own for the sliding layers."""

    decoder_layer: type[nn.Module] = DecoderLayer

    def __init__(
        self,
        config: ModelConfig,
        max_positions: int,
        ops: FusedOps = TORCH_OPS,
        lm_head: bool = True,
    ) -> None:
        super().__init__()
        self.config = config
        # Without it (the pooling runner) only hidden states are computed: a checkpoint's
        # lm_head weights are skipped, and a tied one's packed copy is never made.
        self.has_lm_head = lm_head
        self.max_positions = max_positions
        self.embed_tokens = embedding(config.vocab_size, config.hidden_size)
        windows = config.layer_windows or (None,) * config.num_layers
        rotations = config.rope_layers or (True,) * config.num_layers
        sparse = config.moe_layers or (config.num_experts > 0,) * config.num_layers
        self.layers = nn.ModuleList(
            self.decoder_layer(config, ops, window, rotates, moe)
            for window, rotates, moe in zip(windows, rotations, sparse, strict=True)
        )
        self.norm = self.make_final_norm(config, ops)
        self.rotary = RotaryEmbedding(config.rope, self._rotated, max_positions)
        self.local_rotary = self._local_rotary()
        self.linear = ops.linear
        if lm_head and not config.tie_word_embeddings:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, False, ops.linear)
        if config.is_classifier:
            # A sequence classifier's head (transformers' `score`), read once per prompt.
            self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        # The weight logits read: the lm_head's, or (tied) the embedding table
        # in the linear method's layout, set by `pack_weights`.
        self.logits_weight: torch.Tensor | None = None

    @staticmethod
    def make_final_norm(config: ModelConfig, ops: FusedOps) -> nn.Module:
        """The norm closing the stack; it adds the last layer's output to the stream."""
        return RMSNorm(config.hidden_size, config.rms_norm_eps, ops)

    @property
    def _rotated(self) -> int:
        """How many dimensions of a head the rotation turns."""
        return self.config.rotary_dim or self.config.head_dim

    def _local_rotary(self) -> RotaryEmbedding | None:
        local = self.config.local_rope
        if local is None:
            return None
        return RotaryEmbedding(local, self._rotated, self.max_positions)

    def rebuild_buffers(self, device: torch.device) -> None:
        """Recompute the rotary tables (fp32, never cast) after materialising from meta."""
        rotary = RotaryEmbedding(self.config.rope, self._rotated, self.max_positions)
        self.rotary = rotary.to(device)
        local = self._local_rotary()
        self.local_rotary = None if local is None else local.to(device)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        backend: AttentionBackend,
        metadata: Any,
    ) -> torch.Tensor:
        """Hidden states after the final norm, one row per input token."""
        hidden = self.embed_tokens(input_ids)
        if self.config.embed_scale != 1.0:
            # In the embedding's dtype, as HF scales it.
            hidden = hidden * torch.tensor(self.config.embed_scale, dtype=hidden.dtype)
        table_dtype = hidden.dtype
        if self.config.rotary_precision == "fp32_table":
            table_dtype = torch.float32
        rope = self.rotary.table(positions, table_dtype)
        local = rope
        if self.local_rotary is not None:
            local = self.local_rotary.table(positions, table_dtype)
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            turn = local if layer.self_attn.window is not None else rope
            hidden, residual = layer(hidden, residual, turn, kv_cache, backend, metadata)
        hidden, _ = self.norm(hidden, residual)
        return hidden

    def pack_weights(self) -> None:
        """After loading: put every matmul weight in the linear method's layout.

        A tied lm_head gets its own packed copy of the embedding table when the
        layout differs (the lookup needs the plain rows); otherwise they share it.
        """
        for module in self.modules():
            if isinstance(module, Linear):
                module.pack()
        if not self.has_lm_head:
            return
        if self.config.tie_word_embeddings:
            self.logits_weight = self.linear.pack(self.embed_tokens.weight.detach())
        else:
            self.logits_weight = self.lm_head.weight

    def lora_projections(self) -> Iterator[tuple[int, Linear, tuple[tuple[str, int], ...]]]:
        """Each fused projection LoRA can update: (layer, the Linear, its checkpoint parts
        with their output sizes, in the order the fusion concatenates them)."""
        c = self.config
        q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        for index, layer in enumerate(self.layers):
            attn, mlp = layer.self_attn, layer.mlp
            yield index, attn.qkv_proj, (("q_proj", q), ("k_proj", kv), ("v_proj", kv))
            yield index, attn.o_proj, (("o_proj", c.hidden_size),)
            if not isinstance(mlp, MLP):
                continue  # experts take no adapters here (attention still does)
            inter = c.intermediate_size
            yield index, mlp.gate_up_proj, (("gate_proj", inter), ("up_proj", inter))
            yield index, mlp.down_proj, (("down_proj", c.hidden_size),)

    def _load_expert_weight(self, key: re.Match[str], hf_name: str, tensor: torch.Tensor) -> str:
        """A mixture-of-experts weight (the router's or one expert's matrix); returns the
        key that marks it loaded."""
        index = int(key["layer"])
        mlp = self.layers[index].mlp if index < len(self.layers) else None
        if not isinstance(mlp, SparseMoE):
            raise ValueError(f"unexpected weight {hf_name!r}: layer {index} has no experts")
        if key["expert"] is None:
            with torch.no_grad():
                mlp.gate.copy_(tensor)
            return f"layers.{index}.mlp.gate"
        part = EXPERT_PARTS.get(key["part"])
        if part is None or int(key["expert"]) >= mlp.gate.shape[0]:
            raise ValueError(f"unexpected weight {hf_name!r} for {self.config.architecture}")
        side = key["side"] or ""
        return f"layers.{index}.mlp:" + mlp.load_expert(int(key["expert"]), part, tensor, side)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.logits_weight is None:
            raise RuntimeError(
                "compute_logits without an LM head (pooling runner) or before pack_weights"
            )
        logits = self.linear.apply(hidden, self.logits_weight, None)
        if self.config.logit_scale != 1.0:
            logits = logits * self.config.logit_scale  # in the model's dtype, as Cohere's
        logits = logits.float()
        if self.config.logits_scaling != 1.0:
            logits = logits / self.config.logits_scaling
        cap = self.config.final_logit_softcapping
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    @property
    def _head_rows_source(self) -> str | None:
        """The checkpoint tensor a classifier_from_token head is cut from (None: none)."""
        if not self.config.classifier_token_ids:
            return None
        return "embed_tokens.weight" if self.config.tie_word_embeddings else "lm_head.weight"

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """A classifier's logits for pooled hidden states, in float32 (the head's own
        dtype: load_model keeps it so)."""
        return torch.nn.functional.linear(pooled.float(), self.score.weight.float())

    def checkpoint_name(self, hf_name: str) -> str | None:
        """A checkpoint tensor's name in this model (None: not this model's tensor)."""
        return hf_name.removeprefix("model.")

    def load_own_weight(self, name: str, tensor: torch.Tensor) -> str | None:
        """A family's weight the generic loader cannot place (gpt-oss's stacked experts):
        copied in, returning the parameter it filled; None: not such a weight."""
        return None

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors in, fusing q/k/v and gate/up as they arrive."""
        if self.config.interleaved_rope:  # GLM's and ERNIE's pairs, for half-split kernels
            weights = half_split_checkpoint(weights, self.config.head_dim, self.config.rotary_dim)
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        qkv_offsets = {
            "q_proj": (0, self.layers[0].self_attn.q_size),
            "k_proj": (self.layers[0].self_attn.q_size, self.layers[0].self_attn.kv_size),
            "v_proj": (
                self.layers[0].self_attn.q_size + self.layers[0].self_attn.kv_size,
                self.layers[0].self_attn.kv_size,
            ),
        }

        def mlp_offsets(fused: str) -> dict[str, tuple[int, int]]:
            """Gate and up rows in a fused gate_up_proj (a dense MLP's or, of another
            width, a Qwen2-MoE shared expert's); an FP8 weight's scales count its rows."""
            inter = params[fused.removesuffix(FP8_SCALE_SUFFIX)].shape[0] // 2
            return {"gate_proj": (0, inter), "up_proj": (inter, inter)}

        for hf_name, tensor in weights:
            name = self.checkpoint_name(hf_name)
            if name is None or "rotary_emb" in name:
                continue
            kv_scale = kv_scale_target(name)
            if kv_scale is not None:
                layer, which = kv_scale
                if layer >= len(self.layers):
                    raise ValueError(f"unexpected weight {hf_name!r}: no layer {layer}")
                attention = self.layers[layer].self_attn
                try:
                    attention.kv_scales = with_scale(attention.kv_scales, which, tensor)
                except ValueError as exc:
                    raise ValueError(f"{hf_name!r}: {exc}") from None
                continue
            own = self.load_own_weight(name, tensor)
            if own is not None:
                loaded.add(own)
                continue
            expert = EXPERT_KEY.match(name)
            if expert is not None:
                loaded.add(self._load_expert_weight(expert, hf_name, tensor))
                continue
            if name == self._head_rows_source:
                # vLLM's classifier_from_token: the head is these tokens' rows.
                assert self.config.classifier_head is not None
                with torch.no_grad():
                    self.score.weight.copy_(
                        head_weight(
                            tensor,
                            self.config.classifier_token_ids,
                            self.config.classifier_head.two_way,
                        )
                    )
                loaded.add("score.weight")
            if name == "lm_head.weight" and (
                self.config.tie_word_embeddings or not self.has_lm_head
            ):
                continue
            target, offset = name, None
            for part, span in qkv_offsets.items():
                if f"self_attn.{part}." in name:
                    target, offset = name.replace(part, "qkv_proj"), span
            for part in ("gate_proj", "up_proj"):
                if re.search(rf"(mlp|shared_expert)\.{part}\.", name):
                    target = name.replace(part, "gate_up_proj")
                    offset = mlp_offsets(target)[part] if target in params else None
            if target not in params:
                quantized = self.config.int_weights is not None
                if quantized and name.endswith(".bias") and not tensor.any():
                    # Older AutoGPTQ exports write a zero bias for every quantized layer,
                    # biased or not: adding zeros changes nothing.
                    continue
                raise ValueError(f"unexpected weight {hf_name!r} for {self.config.architecture}")
            param = params[target]
            with torch.no_grad():
                if offset is None:
                    param.copy_(tensor)
                    loaded.add(target)
                    # Saved fused already (Phi-3's qkv_proj and gate_up_proj): every part.
                    parts = qkv_offsets if "qkv_proj" in target else None
                    if "gate_up_proj" in target:
                        parts = mlp_offsets(target)
                    loaded.update(f"{target}:{start}" for start, _ in (parts or {}).values())
                else:
                    start, rows = offset
                    if target.endswith(FP8_SCALE_SUFFIX):  # a row of scales per tile of rows
                        tile = self.config.weight_block_size or (1, 1)
                        start, rows = start // tile[0], -(-rows // tile[0])
                    param.narrow(0, start, rows).copy_(tensor)
                    loaded.add(f"{target}:{offset[0]}")
        expected = set()
        stacked = set()  # routers and expert stacks: their parts are listed instead
        for index, layer in enumerate(self.layers):
            if isinstance(layer.mlp, SparseMoE):
                expected.add(f"layers.{index}.mlp.gate")
                expected.update(f"layers.{index}.mlp:{p}" for p in layer.mlp.expected_parts())
                sides = ("", "_scale_inv", "_scale", "_zero")
                stacks = ["gate", *(f"{p}{side}" for p in ("gate_up", "down") for side in sides)]
                stacked.update(f"layers.{index}.mlp.{p}" for p in stacks)
        for n in params:
            if n in stacked:
                continue
            if "qkv_proj.weight" in n or "qkv_proj.bias" in n:
                expected.update(f"{n}:{start}" for start, _ in qkv_offsets.values())
            elif "gate_up_proj" in n:
                expected.update(f"{n}:{start}" for start, _ in mlp_offsets(n).values())
            else:
                expected.add(n)
        missing = expected - loaded
        unbiased = {name for name in missing if name.endswith("o_proj.bias")}
        if unbiased:
            # `attention_bias` ports of models whose output projection has none (some
            # "llamafied" Qwen checkpoints): zeros, as transformers initialises them.
            logger.warning("%d o_proj biases are not in the checkpoint: zeros", len(unbiased))
            with torch.no_grad():
                for name in unbiased:
                    params[name].zero_()
            missing -= unbiased
        if missing:
            raise ValueError(f"checkpoint is missing weights: {sorted(missing)[:5]}")
        if self.config.fp32_norm_weights:
            # Kept in fp32, which the norm then multiplies by before its one rounding (as
            # HF's Gemma and OLMo norms); Gemma stores each as an offset from 1, folded in.
            with torch.no_grad():
                for module in self.modules():
                    if isinstance(module, RMSNorm):
                        weight = module.weight.detach().float()
                        module.weight.data = weight.add_(self.config.norm_offset)
