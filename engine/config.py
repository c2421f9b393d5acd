"""Frozen configuration for the model architecture and for one engine instance.

`ModelConfig` is read once from a HF `config.json`; `EngineConfig` carries the
user's limits (vLLM's names). Neither changes after start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.classifier_tokens import TokenHead, token_head
from engine.configuration_error import ConfigurationError
from engine.hf_overrides import apply_hf_overrides, parse_hf_overrides
from engine.lora_config import LoRAConfig
from engine.pooler_config import PoolerConfig
from engine.sampling_params import DEFAULT_MAX_LOGPROBS, LOGPROBS_MODES
from engine.speculative_config import SpeculativeConfig
from engine.weight_quantization import IntWeights, sidecar_quantization, weight_quantization
from kernels.kv_cache_dtype import KV_CACHE_DTYPES

# vLLM's --quantization values served (engine/online_fp8.py applies them).
# What --quantization may name: "fp8" quantizes a full-precision checkpoint as it
# loads; the others name a quantized checkpoint's own format (vLLM's Marlin variants
# are its kernels for the same GPTQ and AWQ files) and change nothing.
QUANTIZATION_METHODS = (
    "fp8",
    "mxfp4",
    "compressed-tensors",
    "gptq",
    "gptq_marlin",
    "awq",
    "awq_marlin",
)

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3_text",
    "SmolLM3ForCausalLM": "smollm3",
    "GraniteForCausalLM": "granite",
    "Phi3ForCausalLM": "phi3",
    # Post-norm layers and query/key norms across all heads; OLMo 3 slides 3 layers in 4.
    "Olmo2ForCausalLM": "olmo2",
    "Olmo3ForCausalLM": "olmo3",
    # OLMo 2's post-norm layers with a query/key norm per head; where it slides (3 layers
    # in 4), the full-attention layers use no positions (NoPE).
    "Exaone4ForCausalLM": "exaone4",
    # Gemma 2's sandwich norms under other names, and an interleaved rotation of half of
    # each head (engine/models/glm4.py).
    "Glm4ForCausalLM": "glm4",
    # Llama with GLM's interleaved rotation over whole heads (ERNIE 4.5's dense models).
    "Ernie4_5ForCausalLM": "ernie4_5",
    # One LayerNorm feeding attention and the MLP side by side, interleaved rotation,
    # scaled logits; Cohere 2 slides 3 layers in 4 (engine/models/cohere.py).
    "CohereForCausalLM": "cohere",
    "Cohere2ForCausalLM": "cohere2",
    # Llama with biased q/k/v (and, if `attention_out_bias`, output) projections.
    "SeedOssForCausalLM": "seed_oss",
    # Mistral with `layer_types` naming its sliding layers (Ministral 8B).
    "MinistralForCausalLM": "ministral",
    # LayerNorms with biases, biased projections, an ungated GELU MLP
    # (engine/models/starcoder2.py).
    "Starcoder2ForCausalLM": "starcoder2",
    # Mixture-of-experts MLPs (engine/models/moe.py).
    "MixtralForCausalLM": "mixtral",
    "Qwen2MoeForCausalLM": "qwen2_moe",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    # Granite's multipliers and Mixtral's routing, experts stored as stacks
    # (engine/models/granite_moe.py).
    "GraniteMoeForCausalLM": "granitemoe",
    # Experts with biases and a clamped SwiGLU, attention sinks, every other layer
    # sliding (engine/models/gpt_oss.py); released with MXFP4 experts.
    "GptOssForCausalLM": "gpt_oss",
    # Vision-language models whose text model the engine serves (their vision tower's
    # weights skipped: engine/models/vision_language.py): Gemma 3 4B and up, Mistral
    # Small 3.1/3.2, and Qwen's (2-VL, 2.5-VL, 3-VL and 3-VL MoE), whose multimodal
    # rotation turns text by its one position as the plain rotation does.
    "Gemma3ForConditionalGeneration": "gemma3",
    "Mistral3ForConditionalGeneration": "mistral",
    "Qwen2VLForConditionalGeneration": "qwen2",
    "Qwen2_5_VLForConditionalGeneration": "qwen2",
    "Qwen3VLForConditionalGeneration": "qwen3",
    "Qwen3VLMoeForConditionalGeneration": "qwen3_moe",
    # The same networks saved without their LM head: embedding models (e5-mistral,
    # gte-Qwen2, Qwen3-Embedding, ...), which only the pooling runner serves.
    "LlamaModel": "llama",
    "MistralModel": "mistral",
    "Qwen2Model": "qwen2",
    "Qwen3Model": "qwen3",
    # The same networks with a classifier head (`score`) on the last token: sequence
    # classifiers, cross-encoder rerankers and reward models, served by the pooling
    # runner (/classify, and /score and /rerank for one-label models).
    "LlamaForSequenceClassification": "llama",
    "MistralForSequenceClassification": "mistral",
    "Qwen2ForSequenceClassification": "qwen2",
    "Qwen3ForSequenceClassification": "qwen3",
    # Encoders (bidirectional attention, learned positions, post-norm LayerNorm layers:
    # engine/models/bert.py), served by the pooling runner only: sentence-transformers
    # embedding models (bge, e5, MiniLM, bge-m3, ...) and cross-encoder rerankers
    # (ms-marco MiniLM, bge-reranker).
    "BertModel": "bert",
    "RobertaModel": "roberta",
    "XLMRobertaModel": "xlm-roberta",
    "BertForSequenceClassification": "bert",
    "RobertaForSequenceClassification": "roberta",
    "XLMRobertaForSequenceClassification": "xlm-roberta",
}

# Families whose attention is bidirectional (engine/models/bert.py).
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta")
# Their MLP activations, by transformers' names: the exact GELU, or its tanh form.
ENCODER_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_tanh": "gelu_tanh",
}

RUNNERS = ("auto", "generate", "pooling")
LAYER_TYPES = frozenset({"full_attention", "sliding_attention"})
GEMMA3_TYPES = ("gemma3_text", "gemma3")
COHERE_TYPES = ("cohere", "cohere2")
# Families rotating in adjacent pairs, whose query/key rows the loader reorders.
INTERLEAVED_ROPE_TYPES = ("glm4", "ernie4_5", *COHERE_TYPES)
ROTARY_PRECISION = {"cohere": "fp32", "cohere2": "fp32", "ernie4_5": "fp32_table"}
# Every Gemma generation: scaled embeddings, `1 + w` norm weights, a GELU-tanh MLP.
GEMMA_TYPES = ("gemma", "gemma2", *GEMMA3_TYPES)
# Families whose window is off unless `use_sliding_window` turns it on.
SWITCHED_WINDOWS = ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "smollm3")
# Families whose attention has no output bias, whatever `attention_bias` says.
NO_OUTPUT_BIAS = ("qwen2", "qwen2_moe", "mistral", "phi3", "glm4")
# Gemma's MLP activation, by its HF names.
GELU_TANH = ("gelu_pytorch_tanh", "gelu_tanh")

_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding parameters: Llama 3's frequency scaling, linear interpolation,
    or YaRN (how Qwen2.5 and Qwen3 reach 128K tokens)."""

    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    # YaRN: the rotations bounding the interpolated band, and cos/sin's scale (None:
    # derived from `factor`, and from mscale/mscale_all_dim when both are given).
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True
    # LongRoPE (Phi-3.5, Phi-4-mini): per-dimension stretches for contexts within the
    # original one and beyond it.
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()

    @classmethod
    def from_hf(cls, hf: dict[str, Any], layer_type: str = "full_attention") -> RopeConfig:
        """`layer_type`: whose rotation, where a config gives one per kind of layer
        (Gemma 3's sliding layers rotate with another theta)."""
        # transformers >= 5 nests theta inside rope_parameters; older configs use
        # rope_theta + rope_scaling.
        params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        if LAYER_TYPES.intersection(params):
            params = dict(params.get(layer_type) or {})
        theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
        rope_type = str(params.get("rope_type", params.get("type", "default")))
        if rope_type == "su":  # LongRoPE's first name
            rope_type = "longrope"
        if rope_type not in ("default", "llama3", "linear", "yarn", "longrope"):
            raise ConfigurationError(f"unsupported rope scaling type {rope_type!r}")
        # As in transformers: a top-level original context (Phi-3's) first, and YaRN's
        # and LongRoPE's default to the configured one.
        original = (
            hf.get("original_max_position_embeddings")
            or params.get("original_max_position_embeddings")
            or (hf.get("max_position_embeddings") if rope_type in ("yarn", "longrope") else None)
        )
        factor = params.get("factor")
        if factor is None and rope_type in ("yarn", "longrope") and original:
            factor = hf.get("max_position_embeddings", original) / original
        optional = {
            key: float(params[key])
            for key in ("attention_factor", "mscale", "mscale_all_dim")
            if params.get(key) is not None
        }
        return cls(
            theta=theta,
            rope_type=rope_type,
            factor=float(factor or 1.0),
            low_freq_factor=float(params.get("low_freq_factor", 1.0)),
            high_freq_factor=float(params.get("high_freq_factor", 4.0)),
            original_max_position_embeddings=int(original or 8192),
            beta_fast=float(params.get("beta_fast") or 32.0),
            beta_slow=float(params.get("beta_slow") or 1.0),
            truncate=bool(params.get("truncate", True)),
            short_factor=tuple(float(f) for f in params.get("short_factor") or ()),
            long_factor=tuple(float(f) for f in params.get("long_factor") or ()),
            **optional,
        )

    def context_length(self, max_position_embeddings: int) -> int:
        """The longest context the rotation serves. YaRN stretches the original one by
        `factor` (as vLLM derives it; configs often leave it out of
        max_position_embeddings), never below the configured one."""
        if self.rope_type != "yarn":
            return max_position_embeddings
        stretched = int(self.original_max_position_embeddings * self.factor)
        return max(max_position_embeddings, stretched)


@dataclass(frozen=True)
class ModelConfig:
    """The architecture facts the engine needs, independent of transformers' classes."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    rope: RopeConfig
    # A bias on the attention's output projection (Llama-style `attention_bias`).
    o_proj_bias: bool = False
    # gpt-oss: a learned logit per head that joins its softmax as a key with no value.
    attention_sinks: bool = False
    # Qwen3: an RMSNorm over each query and key head before the rotation; OLMo 2/3 (with
    # `qk_norm_across_heads`): one over all query heads together, one over all key heads.
    qk_norm: bool = False
    qk_norm_across_heads: bool = False
    # Norm weights kept in fp32 and multiplied before the norm's one rounding (Gemma's
    # and OLMo's norms), not in the model's dtype after it (Llama's).
    fp32_norm_weights: bool = False
    eos_token_ids: tuple[int, ...] = ()
    sliding_window: int | None = None
    # Each layer's attention window (None: full attention), as HF's `layer_types` say.
    layer_windows: tuple[int | None, ...] = ()
    # Embedding models trained so that a prefix of their vector is an embedding too.
    is_matryoshka: bool = False
    matryoshka_dimensions: tuple[int, ...] = ()
    # A sequence classifier's label names, in the order of its head's outputs (id2label);
    # () for every other model.
    labels: tuple[str, ...] = ()
    # vLLM's classifier_from_token (engine/classifier_tokens.py): the head is made of
    # these tokens' LM-head rows (their ids: the engine's, from its tokenizer).
    classifier_head: TokenHead | None = None
    classifier_token_ids: tuple[int, ...] = ()
    # Gemma's differences from Llama, each off by default:
    # the MLP's activation ("silu" or "gelu_tanh");
    hidden_activation: str = "silu"
    # token embeddings multiplied by this (sqrt(hidden_size));
    embed_scale: float = 1.0
    # attention scores scaled by this instead of head_dim ** -0.5 (query_pre_attn_scalar);
    attention_scale: float | None = None
    # every RMSNorm weight stored as an offset from this (1: Gemma's `1 + w`);
    norm_offset: float = 0.0
    # logits squashed as cap * tanh(logits / cap);
    final_logit_softcapping: float | None = None
    # attention scores squashed the same way before the softmax (Gemma 2);
    attention_softcap: float | None = None
    # the sliding layers' rotation (None: the same as the full layers').
    local_rope: RopeConfig | None = None
    # Mixture of experts (Mixtral, Qwen3-MoE): each sparse layer routes a token to its
    # `experts_per_token` best of `num_experts` MLPs of `moe_intermediate_size`, their
    # outputs weighted by the router's probabilities (renormalised over the chosen ones
    # if `normalize_routing`). 0 experts: every MLP is dense.
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    normalize_routing: bool = True
    # Mixtral: experts' outputs weighed by fp32 probabilities (Qwen3-MoE rounds them).
    fp32_routing_weights: bool = False
    # Which layers are sparse (empty: all of them, when there are experts).
    moe_layers: tuple[bool, ...] = ()
    # Qwen2-MoE: every sparse layer also runs a shared expert MLP of this width on every
    # token, scaled by a sigmoid gate (0: none).
    shared_expert_intermediate_size: int = 0
    # gpt-oss's experts: (up + 1) * gate * sigmoid(alpha * gate), both clamped at the
    # limit (kernels/clamped_swiglu_and_mul.py).
    swiglu_alpha: float = 1.702
    swiglu_limit: float = 7.0
    # How many of each head's dimensions rotate (Phi's partial_rotary_factor); 0: all.
    rotary_dim: int = 0
    # GLM's: dimensions turn in adjacent pairs, not i with i + d/2; the loader reorders
    # query and key rows so the kernels' half-split rotation does it
    # (engine/interleaved_rope.py).
    interleaved_rope: bool = False
    # Where transformers rotates in fp32 in a 16-bit model: "fp32" (Cohere's: the model
    # dtype's cos/sin, fp32 arithmetic) or "fp32_table" (ERNIE 4.5's: both in fp32);
    # "model": in the model's dtype, as Llama does.
    rotary_precision: str = "model"
    # SmolLM3: which layers rotate queries and keys (the others use no positions: NoPE);
    # empty: all of them.
    rope_layers: tuple[bool, ...] = ()
    # Granite: each sublayer's output is scaled by this before its residual add, and
    # the logits divided by `logits_scaling`. Cohere's: multiplied by `logit_scale`.
    residual_multiplier: float = 1.0
    logits_scaling: float = 1.0
    logit_scale: float = 1.0
    # How the checkpoint stores its weights: None (plain) or "fp8" (dequantized at load,
    # engine/fp8_checkpoint.py), with the FP8 scales' tile (rows, columns; None: one
    # scale per matrix).
    weight_quantization: str | None = None
    weight_block_size: tuple[int, int] | None = None
    # What an FP8 weight's scale is named after it (engine/weight_quantization.py).
    weight_scale_suffix: str = "_scale_inv"
    # Packed-integer checkpoints ("gptq", "awq", "int"): how their codes read
    # (engine/int_checkpoint.py).
    int_weights: IntWeights | None = None
    # Encoders (BERT, RoBERTa, XLM-R): every query sees the whole prompt. Their
    # LayerNorms' epsilon, how many token types their embeddings add (BERT's second
    # text of a pair is type 1; 0: none), and where their learned positions start
    # (RoBERTa's: after the padding index, so max_position_embeddings above is what
    # is left of the table).
    is_encoder: bool = False
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 0
    position_offset: int = 0

    @property
    def writes_harmony(self) -> bool:
        """Whether the model answers in OpenAI's harmony format (gpt-oss)."""
        return self.architecture == "GptOssForCausalLM"

    @property
    def is_classifier(self) -> bool:
        """Whether the checkpoint scores prompts with a classifier head instead."""
        return self.architecture.endswith("ForSequenceClassification")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def has_lm_head(self) -> bool:
        """Whether the checkpoint can generate, not only embed."""
        return self.architecture.endswith(("ForCausalLM", "ForConditionalGeneration"))

    @classmethod
    def from_dict(cls, hf: dict[str, Any]) -> ModelConfig:
        architectures = hf.get("architectures") or []
        # Read before a vision-language config is narrowed to its text model's.
        quantization = weight_quantization(hf)
        named = next((_COMPLETED[a] for a in architectures if a in _COMPLETED), None)
        named = named or hf.get("model_type")
        if named in COMPLETED_TYPES:
            hf = _completed_config(hf, named)
        if "Exaone4ForCausalLM" in architectures or hf.get("model_type") == "exaone4":
            hf = _exaone4_layers(hf)
        arch = next((a for a in architectures if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            model_type = hf.get("model_type")
            arch = next((a for a, t in SUPPORTED_ARCHITECTURES.items() if t == model_type), None)
        if arch is None:
            raise ConfigurationError(
                f"unsupported model architecture {architectures or hf.get('model_type')!r}; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        num_heads = int(hf["num_attention_heads"])
        hidden = int(hf["hidden_size"])
        eos = hf.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        family = SUPPORTED_ARCHITECTURES[arch]
        if quantization and quantization.method == "mxfp4" and family != "gpt_oss":
            raise ValueError("MXFP4 checkpoints are supported for gpt-oss only")
        if quantization and (
            family == "granitemoe"
            or (family in INTERLEAVED_ROPE_TYPES and quantization.int_weights is None)
        ):
            # Expert stacks loaded whole (their scales have no place yet), or query/key
            # rows reordered as they load (FP8 block scales would not follow; packed
            # integers' scales and zeros have a row per output channel, which do).
            kind = "quantized" if family == "granitemoe" else quantization.method.upper()
            raise ConfigurationError(
                f"{kind} {arch} checkpoints are not supported: serve the bf16 release "
                "(--quantization fp8 quantizes it as it loads)"
            )
        if family == "seed_oss" and hf.get("mlp_bias"):
            raise ConfigurationError("Seed-OSS with mlp_bias (biased MLPs) is not supported")
        if family == "ernie4_5" and hf.get("use_bias"):
            raise ConfigurationError(
                "ERNIE 4.5 with use_bias (biased projections) is not supported"
            )
        attention_bias = bool(hf.get("attention_bias", family == "gpt_oss"))
        if family == "starcoder2":
            attention_bias = bool(hf.get("use_bias", True))
            if not attention_bias:
                raise ConfigurationError("StarCoder2 without use_bias is not supported")
        qkv_bias = (
            family == "qwen2"
            or (family == "qwen2_moe" and bool(hf.get("qkv_bias", True)))
            or attention_bias
        )
        gemma = family in GEMMA_TYPES
        if hf.get("use_bidirectional_attention"):
            raise ConfigurationError("bidirectional attention (EmbeddingGemma) is not supported")
        activation = str(hf.get("hidden_activation") or hf.get("hidden_act") or "silu")
        encoder = family in ENCODER_TYPES
        if encoder and hf.get("is_decoder"):
            # A BERT decoder (BertLMHeadModel) attends causally: not what we run it as.
            raise ConfigurationError(
                f"{arch} configured as a decoder (is_decoder) is not supported"
            )
        if encoder:
            hidden_activation = _encoder_activation(hf, activation)
            qkv_bias = attention_bias = True
        elif activation in ("silu", *GELU_TANH):
            hidden_activation = "silu" if activation == "silu" else "gelu_tanh"
        else:
            raise ConfigurationError(f"unsupported MLP activation {activation!r}")
        position_offset = 0
        if family in ("roberta", "xlm-roberta"):
            # Their positions start after the padding index (transformers' padding_idx + 1).
            pad = hf.get("pad_token_id")
            position_offset = (1 if pad is None else int(pad)) + 1
        return cls(
            architecture=arch,
            vocab_size=int(hf["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
            head_dim=int(hf.get("head_dim") or hidden // num_heads),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=(
                int(hf.get("max_position_embeddings", 4096)) - position_offset
            ),
            # transformers' default where a config leaves it out (SmolLM3 ties).
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", family == "smollm3")),
            qkv_bias=qkv_bias,
            # transformers' Qwen2, Mistral and Phi-3 attention has no output bias.
            o_proj_bias=(
                bool(hf.get("attention_out_bias"))
                if family == "seed_oss"
                else attention_bias and family not in NO_OUTPUT_BIAS
            ),
            attention_sinks=family == "gpt_oss",
            rope=RopeConfig.from_hf(hf),
            # Command R+'s (`use_qk_norm`): a LayerNorm per head, its weights per head too.
            qk_norm=family in ("qwen3", "qwen3_moe", "olmo2", "olmo3", "exaone4", *GEMMA3_TYPES)
            or (family == "cohere" and bool(hf.get("use_qk_norm"))),
            qk_norm_across_heads=family in ("olmo2", "olmo3"),
            fp32_norm_weights=gemma or family in ("olmo2", "olmo3", "gpt_oss"),
            eos_token_ids=tuple(int(e) for e in eos_ids),
            sliding_window=_sliding_window(hf, family),
            layer_windows=_layer_windows(hf, family, int(hf["num_hidden_layers"])),
            is_matryoshka=bool(hf.get("is_matryoshka") or hf.get("matryoshka_dimensions")),
            matryoshka_dimensions=tuple(int(d) for d in hf.get("matryoshka_dimensions") or ()),
            labels=_labels(hf) if arch.endswith("ForSequenceClassification") else (),
            classifier_head=_classifier_head(hf, arch),
            hidden_activation=hidden_activation,
            embed_scale=(
                float(hidden**0.5) if gemma else float(hf.get("embedding_multiplier") or 1.0)
            ),
            attention_scale=_attention_scale(hf, family, gemma),
            norm_offset=1.0 if gemma else 0.0,
            final_logit_softcapping=(
                float(hf["final_logit_softcapping"])
                if hf.get("final_logit_softcapping") is not None
                else None
            ),
            attention_softcap=(
                float(hf["attn_logit_softcapping"])
                if hf.get("attn_logit_softcapping") is not None
                else None
            ),
            local_rope=_local_rope(hf),
            rope_layers=_rope_layers(hf, family, int(hf["num_hidden_layers"])),
            rotary_dim=_rotary_dim(hf, int(hf.get("head_dim") or hidden // num_heads)),
            interleaved_rope=family in INTERLEAVED_ROPE_TYPES,
            rotary_precision=ROTARY_PRECISION.get(family, "model"),
            residual_multiplier=float(hf.get("residual_multiplier") or 1.0),
            logits_scaling=float(hf.get("logits_scaling") or 1.0),
            logit_scale=float(hf["logit_scale"]) if family in COHERE_TYPES else 1.0,
            weight_quantization=quantization.method if quantization else None,
            weight_block_size=quantization.block_size if quantization else None,
            weight_scale_suffix=quantization.scale_suffix if quantization else "_scale_inv",
            int_weights=quantization.int_weights if quantization else None,
            **_experts(hf, family, int(hf["num_hidden_layers"])),
            is_encoder=encoder,
            layer_norm_eps=float(hf.get("layer_norm_eps", hf.get("norm_epsilon", 1e-12))),
            type_vocab_size=int(hf.get("type_vocab_size", 2 if family == "bert" else 0)),
            position_offset=position_offset,
        )

    @classmethod
    def from_folder(cls, folder: Path, overrides: dict[str, Any] | None = None) -> ModelConfig:
        """`overrides`: vLLM's --hf-overrides, laid over the folder's config.json."""
        hf = json.loads((folder / "config.json").read_text())
        if not any(key in hf for key in ("quantization_config", "compression_config")):
            sidecar = sidecar_quantization(folder)
            if sidecar is not None:
                hf["quantization_config"] = sidecar
        return cls.from_dict(apply_hf_overrides(hf, overrides or {}))


def _encoder_activation(hf: dict[str, Any], activation: str) -> str:
    """An encoder's MLP activation ("gelu" exact, or "gelu_tanh"), from transformers'
    names; its attention must be the absolute-position kind."""
    kind = hf.get("position_embedding_type", "absolute")
    if kind != "absolute":
        raise ConfigurationError(f"position_embedding_type {kind!r} is not supported (absolute)")
    if activation not in ENCODER_ACTIVATIONS:
        raise ConfigurationError(
            f"unsupported MLP activation {activation!r} for an encoder; supported: "
            f"{', '.join(ENCODER_ACTIVATIONS)}"
        )
    return ENCODER_ACTIVATIONS[activation]


def _classifier_head(hf: dict[str, Any], arch: str) -> TokenHead | None:
    """vLLM's classifier_from_token head; on any other architecture, an error rather than
    an embedding model that silently ignores it."""
    head = _token_head(hf)
    if head is not None and not arch.endswith("ForSequenceClassification"):
        raise ConfigurationError(
            f"classifier_from_token applies to a *ForSequenceClassification architecture, "
            f'not {arch}: add "architectures": ["{arch.split("For")[0].removesuffix("Model")}'
            'ForSequenceClassification"] to --hf-overrides'
        )
    return head


def _token_head(hf: dict[str, Any]) -> TokenHead | None:
    try:
        return token_head(hf)
    except ValueError as exc:
        raise ConfigurationError(f"classifier_from_token: {exc}") from None


def _labels(hf: dict[str, Any]) -> tuple[str, ...]:
    """A classifier's label names by output index, as transformers reads them: id2label,
    else `num_labels` of LABEL_i (two when neither is saved); a head made of tokens'
    rows has its own (engine/classifier_tokens.py)."""
    head = _token_head(hf)
    if head is not None:
        return head.labels
    id2label = hf.get("id2label")
    if isinstance(id2label, dict) and id2label:
        by_index = {int(k): str(v) for k, v in id2label.items()}
        if sorted(by_index) != list(range(len(by_index))):
            raise ConfigurationError(f"id2label must number 0..n-1, got {sorted(by_index)}")
        return tuple(by_index[i] for i in range(len(by_index)))
    count = int(hf.get("num_labels") or 2)
    return tuple(f"LABEL_{i}" for i in range(count))


def _sliding_window(hf: dict[str, Any], family: str) -> int | None:
    """The attention window, if any layer uses one, with transformers' defaults: Qwen
    configs carry a window they switch on with `use_sliding_window` (off unless set);
    Mistral's is on whenever it is set (4096 if the key is absent)."""
    if family in SWITCHED_WINDOWS and not hf.get("use_sliding_window", False):
        return None
    default = {"mistral": 4096, "gpt_oss": 128}.get(family)
    window = hf.get("sliding_window", default)
    return int(window) if window else None


# Model types whose config is completed from transformers' own class (name, and the
# architecture a config without one is): (config class, default architecture).
COMPLETED_TYPES = {
    "gemma": ("GemmaConfig", "GemmaForCausalLM"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForConditionalGeneration"),
    "mistral3": ("MistralConfig", "Mistral3ForConditionalGeneration"),
    "olmo3": ("Olmo3Config", "Olmo3ForCausalLM"),
    "glm4": ("Glm4Config", "Glm4ForCausalLM"),
    "ernie4_5": ("Ernie4_5Config", "Ernie4_5ForCausalLM"),
    "cohere": ("CohereConfig", "CohereForCausalLM"),
    "cohere2": ("Cohere2Config", "Cohere2ForCausalLM"),
    "seed_oss": ("SeedOssConfig", "SeedOssForCausalLM"),
    "ministral": ("MinistralConfig", "MinistralForCausalLM"),
    "granitemoe": ("GraniteMoeConfig", "GraniteMoeForCausalLM"),
    "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM"),
    "qwen2_vl": ("Qwen2VLTextConfig", "Qwen2VLForConditionalGeneration"),
    "qwen2_5_vl": ("Qwen2_5_VLTextConfig", "Qwen2_5_VLForConditionalGeneration"),
    "qwen3_vl": ("Qwen3VLTextConfig", "Qwen3VLForConditionalGeneration"),
    "qwen3_vl_moe": ("Qwen3VLMoeTextConfig", "Qwen3VLMoeForConditionalGeneration"),
}
# Qwen's vision-language types, whose LM head is tied where the inner flag says so unless
# the outer one decides: transformers lifts Qwen2-VL's and Qwen2.5-VL's inner flag
# outward (tied where either is set); Qwen3-VL's ties by the outer flag where the file
# sets one, vLLM by the inner one where it does not.
QWEN_VL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
_LIFTED_TIE_TYPES = ("qwen2_vl", "qwen2_5_vl")

# The architecture each of those types completes (what names them in `architectures`).
_COMPLETED = {arch: model_type for model_type, (_, arch) in COMPLETED_TYPES.items()}


def _completed_config(hf: dict[str, Any], model_type: str) -> dict[str, Any]:
    """The full config of a Gemma or OLMo 3 model, or the text model of a vision-language
    one (Gemma 3, Mistral 3, Qwen's). Their config.json files list only what differs from
    transformers' defaults (a vision-language model's `text_config` often just its
    sizes; Gemma 2's no layer types), so the defaults come from transformers' own
    config class. It also reads Gemma 1's legacy `hidden_act: "gelu"` as the tanh form
    the model was trained with, and Qwen2-VL's `mrope` rotation as the plain one (text
    alone has one position per token on all three of its axes)."""
    import transformers  # heavy; only these families read it

    class_name, default_arch = COMPLETED_TYPES[model_type]
    config_class = getattr(transformers, class_name)
    text = dict(hf.get("text_config") or hf)
    if "text_config" in hf:
        if model_type == "mistral3" and text.get("model_type", "mistral") != "mistral":
            raise ConfigurationError(
                f"Mistral3ForConditionalGeneration with a {text['model_type']!r} text model "
                "is not supported (only Mistral's: Mistral Small 3.1/3.2)"
            )
        # transformers ties a vision-language model's LM head by the outer flag where the
        # file sets one; otherwise by the text model's own setting or its class default
        # (Mistral Small's files set neither and ship a head of their own).
        if model_type in _LIFTED_TIE_TYPES:
            tied = hf.get("tie_word_embeddings") or text.get("tie_word_embeddings")
            text["tie_word_embeddings"] = bool(tied)
        elif model_type in QWEN_VL_TYPES and hf.get("tie_word_embeddings") is None:
            text["tie_word_embeddings"] = bool(text.get("tie_word_embeddings"))
        elif hf.get("tie_word_embeddings") is not None:
            text["tie_word_embeddings"] = hf["tie_word_embeddings"]
        if "eos_token_id" not in text and hf.get("eos_token_id") is not None:
            text["eos_token_id"] = hf["eos_token_id"]
    known = {k: v for k, v in text.items() if k not in ("architectures", "model_type")}
    full = config_class(**known).to_dict()
    if model_type == "qwen3_vl_moe":
        # Its router always renormalises the chosen experts' weights (no switch).
        full["norm_topk_prob"] = True
    full["architectures"] = hf.get("architectures") or [default_arch]
    full["model_type"] = hf.get("model_type", model_type)
    return full


def _attention_scale(hf: dict[str, Any], family: str, gemma: bool) -> float | None:
    """What scores are scaled by where it is not head_dim ** -0.5: Gemma's
    query_pre_attn_scalar ** -0.5, Granite's attention_multiplier."""
    if gemma and hf.get("query_pre_attn_scalar"):
        return float(hf["query_pre_attn_scalar"]) ** -0.5
    if hf.get("attention_multiplier") is not None:
        return float(hf["attention_multiplier"])
    if family == "granite":  # transformers' default multiplier
        return 1.0
    return None


def _experts(hf: dict[str, Any], family: str, num_layers: int) -> dict[str, Any]:
    """A mixture-of-experts model's routing, in transformers' names and defaults."""
    if family == "mixtral":
        return {
            "num_experts": int(hf.get("num_local_experts", 8)),
            "experts_per_token": int(hf.get("num_experts_per_tok", 2)),
            "moe_intermediate_size": int(hf["intermediate_size"]),
            "normalize_routing": True,
            "fp32_routing_weights": True,
        }
    if family == "granitemoe":
        return {
            "num_experts": int(hf["num_local_experts"]),
            "experts_per_token": int(hf["num_experts_per_tok"]),
            "moe_intermediate_size": int(hf["intermediate_size"]),
            "normalize_routing": True,  # a softmax over the chosen logits alone
        }
    if family == "gpt_oss":
        return {
            "num_experts": int(hf.get("num_local_experts", 128)),
            # The release's config names it both ways.
            "experts_per_token": int(
                _first_set(hf, "num_experts_per_tok", "experts_per_token", default=4)
            ),
            "moe_intermediate_size": int(hf["intermediate_size"]),
            "swiglu_alpha": float(hf.get("swiglu_alpha", 1.702)),
            "swiglu_limit": float(hf.get("swiglu_limit", 7.0)),
        }
    if family in ("qwen2_moe", "qwen3_moe"):
        dense = set(hf.get("mlp_only_layers") or ())
        step = int(hf.get("decoder_sparse_step", 1))
        qwen2 = family == "qwen2_moe"  # transformers' defaults differ by family
        experts = _first_set(hf, "num_experts", "num_local_experts", default=60 if qwen2 else 128)
        shared = int(hf.get("shared_expert_intermediate_size", 5632)) if qwen2 else 0
        return {
            # Qwen's name, or transformers 5's when it saves one.
            "num_experts": int(experts),
            "experts_per_token": int(hf.get("num_experts_per_tok", 4 if qwen2 else 8)),
            "moe_intermediate_size": int(hf.get("moe_intermediate_size", 1408 if qwen2 else 768)),
            "normalize_routing": bool(hf.get("norm_topk_prob", False)),
            "moe_layers": tuple(i not in dense and (i + 1) % step == 0 for i in range(num_layers)),
            "shared_expert_intermediate_size": shared,
        }
    return {}


def _first_set(hf: dict[str, Any], *keys: str, default: Any) -> Any:
    """The first of `keys` the config sets (0 counts), else `default`."""
    return next((hf[k] for k in keys if hf.get(k) is not None), default)


def _rotary_dim(hf: dict[str, Any], head_dim: int) -> int:
    """The rotated part of each head: head_dim * partial_rotary_factor (top level, or in
    transformers 5's rope_parameters), as transformers truncates it; 0 for all of it."""
    params = hf.get("rope_parameters") or {}
    factor = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    dim = int(head_dim * float(factor))
    if dim == head_dim:
        return 0
    if dim <= 0 or dim % 2:
        raise ValueError(f"partial_rotary_factor {factor} leaves {dim} rotated dimensions")
    return dim


def _rope_layers(hf: dict[str, Any], family: str, num_layers: int) -> tuple[bool, ...]:
    """SmolLM3's `no_rope_layers` (1: the layer rotates; 0: it uses no positions), by
    default every fourth layer without; EXAONE 4's full-attention layers, where it slides;
    () for the families where all rotate."""
    if family == "exaone4":
        if hf.get("sliding_window") is None:
            return ()
        return tuple(kind == "sliding_attention" for kind in hf["layer_types"])
    if family == "cohere2":  # only the sliding layers turn (none, with no window)
        window = hf.get("sliding_window")
        return tuple(bool(window) and kind == "sliding_attention" for kind in hf["layer_types"])
    flags = hf.get("no_rope_layers")
    if flags is None and family == "smollm3":
        interval = int(hf.get("no_rope_layer_interval") or 4)
        flags = [int((i + 1) % interval != 0) for i in range(num_layers)]
    if flags is None:
        return ()
    if len(flags) != num_layers:
        raise ValueError(f"no_rope_layers lists {len(flags)} layers, the model has {num_layers}")
    return tuple(bool(flag) for flag in flags)


def _exaone4_layers(hf: dict[str, Any]) -> dict[str, Any]:
    """EXAONE 4's config with its window and `layer_types` spelled out, as transformers'
    Exaone4Config derives them: a 4096-token window unless set (null: no sliding), and a
    `sliding_window_pattern` ("LLLG", or every n-th layer full) where the types are not
    listed."""
    hf = {"sliding_window": 4096, **hf}
    layers = int(hf["num_hidden_layers"])
    if hf["sliding_window"] is None:
        return {**hf, "layer_types": ["full_attention"] * layers}
    if hf.get("layer_types") is not None:
        return hf
    pattern = hf.get("sliding_window_pattern", 4)
    if isinstance(pattern, str):
        if not pattern or set(pattern) - {"L", "G"}:
            raise ConfigurationError(f"sliding_window_pattern {pattern!r}: expected L and G")
        sliding = [pattern[i % len(pattern)] == "L" for i in range(layers)]
    else:
        sliding = [bool(pattern) and (i + 1) % int(pattern) != 0 for i in range(layers)]
    kinds = ["sliding_attention" if s else "full_attention" for s in sliding]
    return {**hf, "layer_types": kinds}


def _local_rope(hf: dict[str, Any]) -> RopeConfig | None:
    """The sliding layers' own rotation: Gemma 3's (a sub-dict of rope_parameters, or the
    older rope_local_base_freq); None where every layer rotates alike."""
    params = hf.get("rope_parameters") or {}
    if "sliding_attention" in params:
        return RopeConfig.from_hf(hf, "sliding_attention")
    if hf.get("rope_local_base_freq") is not None:
        return RopeConfig(theta=float(hf["rope_local_base_freq"]))
    return None


def _layer_windows(hf: dict[str, Any], family: str, num_layers: int) -> tuple[int | None, ...]:
    """Which layers slide: all of Mistral's; otherwise those `layer_types` names
    "sliding_attention", and without that list (older configs) Qwen's from
    `max_window_layers` (28 unless set) on, as transformers reads them."""
    window = _sliding_window(hf, family)
    if window is None:
        return (None,) * num_layers
    types = hf.get("layer_types")
    # Every layer, whatever else is said; but a Mistral config listing layer_types is
    # Ministral 8B's, which transformers reads as Ministral (alternating layers).
    if family in ("mixtral", "qwen3_moe") or (family == "mistral" and types is None):
        return (window,) * num_layers
    if types is not None:
        if len(types) != num_layers:
            raise ValueError(f"layer_types lists {len(types)} layers, the model has {num_layers}")
        return tuple(window if t == "sliding_attention" else None for t in types)
    if family == "gpt_oss":  # transformers' default: every other layer, the first sliding
        return tuple(None if i % 2 else window for i in range(num_layers))
    pattern = hf.get("sliding_window_pattern")
    if pattern:  # older Gemma 3 configs: every pattern-th layer attends fully
        return tuple(None if (i + 1) % int(pattern) == 0 else window for i in range(num_layers))
    if family == "qwen2_moe":  # transformers' rule: every other layer, below max_window_layers
        last = int(hf.get("max_window_layers", 28))
        return tuple(window if (i + 1) % 2 and i < last else None for i in range(num_layers))
    first = int(hf.get("max_window_layers", 28)) if family in ("qwen2", "qwen3") else 0
    return tuple(window if i >= first else None for i in range(num_layers))


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """bf16 on CUDA; fp32 on CPU, whose greedy output matches HF's fp32 token for token.

    On a CPU with native bf16 dot products (AVX512-BF16 or AMX) bf16 is ~1.5x faster
    (README, Performance), but it is asked for (`--dtype bfloat16`), not assumed:
    `cpu_bf16_is_native` lets the engine say so at start-up.
    """
    if name is None or name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return _DTYPES[name]
    except KeyError:
        raise ConfigurationError(
            f"dtype: unsupported {name!r}; use one of {sorted(_DTYPES)}"
        ) from None


class DeviceUnavailable(RuntimeError):
    """The GPU asked for is not visible now; unlike a configuration error, a restart
    (the driver loaded, the GPU back) may mend it."""


def cpu_bf16_is_native() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX tiles)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def cpu_multiplies_slowly(dtype: torch.dtype) -> bool:
    """Whether this CPU lacks native matmuls for a 16-bit `dtype`: without AVX512-BF16
    or AMX, torch emulates bf16 (and fp16 without AVX512-FP16) at about 1 GFLOP/s on
    two cores, some hundred times slower than float32."""
    if dtype == torch.bfloat16:
        return not cpu_bf16_is_native()
    if dtype == torch.float16:
        return not torch.ops.mkldnn._is_mkldnn_fp16_supported()
    return False


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@dataclass(frozen=True)
class EngineConfig:
    """Limits and switches for one engine, named like vLLM's flags."""

    model: str | None = None
    # vLLM's --tokenizer (a folder or hub id whose tokenizer replaces the model's),
    # --revision (a hub model's branch, tag or commit) and --download-dir (hub files).
    tokenizer: str | None = None
    revision: str | None = None
    tokenizer_revision: str | None = None
    download_dir: Path | None = None
    # vLLM's --hf-token: hub downloads' token (None: HF_TOKEN or the stored login).
    hf_token: str | None = field(default=None, repr=False)
    served_model_name: str | None = None
    device: str | None = None
    # Threads torch computes with on a CPU device (None: torch's default, one per core).
    # Several engines sharing one CPU must split it: more threads than cores in all
    # makes every step wait on descheduled threads (5x slower measured on 2 cores).
    cpu_threads: int | None = None
    dtype: str | None = None
    block_size: int = 16
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    # Requests at or above this priority are background work (the worker marks batch
    # lines so): they prefill at most `background_prefill_tokens` per step, which bounds
    # how long a step, and so an interactive request arriving during it, can take.
    background_priority: int | None = None
    background_prefill_tokens: int = 256
    # vLLM's --long-prefill-token-threshold: the most prompt tokens one sequence prefills
    # per step (0: as many as the budget allows), so short prompts are not stuck behind
    # long ones (engine/scheduler.py).
    long_prefill_token_threshold: int = 0
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    kv_cache_memory: int = 1 << 30
    # vLLM's --kv-cache-memory-bytes: the cache's bytes on any device (None: the share
    # gpu_memory_utilization leaves on a GPU, kv_cache_memory on a CPU).
    kv_cache_memory_bytes: int | None = None
    # vLLM's --structured-outputs-config disable_any_whitespace: JSON constraints allow
    # no whitespace between tokens (a request's own whitespace pattern still wins).
    compact_json: bool = False
    # vLLM's --kv-cache-dtype: "auto" (the model's dtype), "fp8" (= "fp8_e4m3") or
    # "fp8_e5m2": a byte per key and value (kernels/kv_cache_dtype.py).
    kv_cache_dtype: str = "auto"
    # vLLM's --quantization: "fp8" quantizes a full-precision checkpoint's projections as
    # it loads (engine/online_fp8.py); a quantized checkpoint's own method changes nothing.
    quantization: str | None = None
    gpu_memory_utilization: float = 0.9
    num_kv_blocks: int | None = None
    chat_template: str | None = None
    attention_backend: str | None = None
    # Decode steps replay CUDA graphs on a GPU (engine/decode_graphs.py) unless this is set.
    enforce_eager: bool = False
    data_dir: Path = field(default_factory=lambda: Path("~/.cache/conveyor").expanduser())
    seed: int = 0
    # vLLM's --max-logprobs: the most logprobs a request may ask for (-1: the vocabulary).
    max_logprobs: int = DEFAULT_MAX_LOGPROBS
    # vLLM's --logprobs-mode (engine/sampling_params.py LOGPROBS_MODES): raw or processed
    # logprobs, or logits.
    logprobs_mode: str = "raw_logprobs"
    # vLLM's --speculative-config (a SpeculativeConfig, its dict or JSON); None: off.
    speculative_config: SpeculativeConfig | None = None
    # vLLM's --lora-modules (every adapter loaded at start-up); None: no adapters.
    lora_config: LoRAConfig | None = None
    # vLLM's --runner: "generate" (text), "pooling" (embeddings), or "auto": pooling for
    # a checkpoint without an LM head (LlamaModel, ...), else generate.
    runner: str = "auto"
    # vLLM's --pooler-config (JSON, dict or PoolerConfig): overrides the model's own
    # pooling key by key (engine/pooler_config.py); pooling runner only.
    pooler_config: PoolerConfig | dict[str, Any] | str | None = None
    # vLLM's --hf-overrides (JSON or dict): laid over the checkpoint's config.json
    # (engine/hf_overrides.py), e.g. YaRN rope scaling for a longer context.
    hf_overrides: dict[str, Any] | str | None = None

    def __post_init__(self) -> None:
        if self.speculative_config is not None:
            parsed = SpeculativeConfig.parse(self.speculative_config)
            object.__setattr__(self, "speculative_config", parsed)
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be at least 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(
                f"max_num_batched_tokens must be at least 1, got {self.max_num_batched_tokens}"
            )
        if self.long_prefill_token_threshold < 0:
            raise ValueError(
                "long_prefill_token_threshold must be 0 (off) or more, "
                f"got {self.long_prefill_token_threshold}"
            )
        if self.background_prefill_tokens < 1:
            raise ValueError(
                "background_prefill_tokens must be at least 1, "
                f"got {self.background_prefill_tokens}"
            )
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        if self.max_logprobs < -1:
            raise ValueError(f"max_logprobs must be -1 or more, got {self.max_logprobs}")
        if self.logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(
                f"logprobs_mode must be one of {list(LOGPROBS_MODES)}, got {self.logprobs_mode!r}"
            )
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"cpu_threads must be at least 1, got {self.cpu_threads}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError("num_kv_blocks must be at least 1")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(
                f"kv_cache_dtype must be one of {list(KV_CACHE_DTYPES)}, "
                f"got {self.kv_cache_dtype!r}"
            )
        if self.quantization is not None and self.quantization not in QUANTIZATION_METHODS:
            raise ValueError(
                f"quantization must be one of {list(QUANTIZATION_METHODS)}, "
                f"got {self.quantization!r}"
            )
        if self.runner not in RUNNERS:
            raise ValueError(f"runner must be one of {list(RUNNERS)}, got {self.runner!r}")
        PoolerConfig.parse(self.pooler_config)  # a bad one fails here, before any loading
        object.__setattr__(self, "hf_overrides", parse_hf_overrides(self.hf_overrides) or None)

    def resolve_runner(self, model: ModelConfig) -> str:
        """The runner this engine uses for `model`: "generate" or "pooling"."""
        if self.runner == "auto":
            return "generate" if model.has_lm_head else "pooling"
        if self.runner == "generate" and not model.has_lm_head:
            raise ConfigurationError(
                f"{model.architecture} has no LM head, so it cannot generate text: "
                "serve it with --runner pooling (embeddings)"
            )
        return self.runner

    def torch_device(self) -> torch.device:
        """--device as torch names it. A torch built without CUDA asked for CUDA is a
        ConfigurationError (one line, exit 2, no restarts), never a traceback from deep in
        torch; a GPU not visible now is DeviceUnavailable, which restarts may outlive."""
        if not self.device:
            return default_device()
        try:
            device = torch.device(self.device)
        except RuntimeError as exc:
            raise ConfigurationError(f"--device {self.device!r}: {exc}") from None
        if device.type == "cuda":
            if torch.version.cuda is None and torch.version.hip is None:
                raise ConfigurationError(  # no restart can mend this
                    f"--device {self.device}: this torch ({torch.__version__}) is built "
                    "without CUDA: install a CUDA build on GPU hosts"
                )
            if not torch.cuda.is_available():
                # Often passing (a driver still loading at boot, a GPU lost to an Xid
                # error): a plain failure, which a supervisor restarts.
                raise DeviceUnavailable(
                    f"--device {self.device}: no GPU visible (CUDA_VISIBLE_DEVICES, the driver)"
                )
            visible = torch.cuda.device_count()
            if device.index is not None and device.index >= visible:
                raise ConfigurationError(f"--device {self.device}: only {visible} GPU(s) visible")
        return device
