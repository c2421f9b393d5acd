"""Engine dtype defaults, the start-up bf16 hint, and what a HF config.json is read as."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from engine.config import (
    DeviceUnavailable,
    EngineConfig,
    ModelConfig,
    cpu_bf16_is_native,
    cpu_multiplies_slowly,
    resolve_dtype,
)
from engine.configuration_error import ConfigurationError
from engine.llm import LLM

HINT = "--dtype bfloat16 runs about 1.5x faster"


def test_default_dtypes() -> None:
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="unsupported"):
        resolve_dtype("int3", torch.device("cpu"))


def test_every_dtype_the_flag_accepts_resolves() -> None:
    """`--dtype` refuses at parse time what the engine would refuse after Redis and the
    API started; what it accepts (vLLM's values: auto, half, float16, bfloat16, float,
    float32) the engine reads."""
    from conveyor.settings import Settings

    names = Settings.choices("dtype")
    assert {"auto", "half", "float16", "bfloat16", "float", "float32"} <= set(names)
    for name in names:
        resolve_dtype(name, torch.device("cpu"))
    assert resolve_dtype("float", torch.device("cpu")) == torch.float32


@pytest.mark.parametrize("dtype", [None, "bfloat16", "float32"])
def test_bf16_hint_only_for_the_default_on_a_cpu_with_native_bf16(
    make_random_model: Callable[[str], Path],
    caplog: pytest.LogCaptureFixture,
    dtype: str | None,
) -> None:
    with caplog.at_level(logging.INFO, logger="engine.llm_engine"):
        LLM(str(make_random_model("llama")), dtype=dtype, num_kv_blocks=8, max_model_len=64)
    hinted = HINT in caplog.text
    assert hinted == (dtype is None and cpu_bf16_is_native())
    # Asking for bf16 where the CPU only emulates it is warned about, never the default.
    warned = "this CPU has no native bfloat16 matmuls" in caplog.text
    assert warned == (dtype == "bfloat16" and not cpu_bf16_is_native())


def test_only_16_bit_dtypes_can_be_slow_on_a_cpu() -> None:
    assert not cpu_multiplies_slowly(torch.float32)
    assert cpu_multiplies_slowly(torch.bfloat16) is not cpu_bf16_is_native()


def _hf_config(**extra: object) -> dict[str, object]:
    return {
        "vocab_size": 100,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        **extra,
    }


def test_families_set_their_attention_details() -> None:
    qwen3 = ModelConfig.from_dict(_hf_config(architectures=["Qwen3ForCausalLM"], head_dim=32))
    assert (qwen3.qk_norm, qwen3.qkv_bias, qwen3.head_dim) == (True, False, 32)
    qwen2 = ModelConfig.from_dict(_hf_config(architectures=["Qwen2ForCausalLM"]))
    assert (qwen2.qk_norm, qwen2.qkv_bias, qwen2.head_dim) == (False, True, 16)
    # An embedding checkpoint named only by model_type still gets its family's graph.
    assert ModelConfig.from_dict(_hf_config(model_type="qwen3")).qk_norm


def test_a_window_counts_when_the_config_turns_it_on() -> None:
    # Mistral v0.1's window is on whenever set; Qwen's only with use_sliding_window.
    mistral = _hf_config(architectures=["MistralForCausalLM"], sliding_window=4096)
    assert ModelConfig.from_dict(mistral).sliding_window == 4096
    assert ModelConfig.from_dict({**mistral, "sliding_window": None}).sliding_window is None
    qwen = _hf_config(architectures=["Qwen3ForCausalLM"], sliding_window=32768)
    assert ModelConfig.from_dict({**qwen, "use_sliding_window": False}).sliding_window is None
    assert ModelConfig.from_dict({**qwen, "use_sliding_window": True}).sliding_window == 32768


def test_each_layer_slides_as_the_config_says() -> None:
    """As transformers reads each family's keys, its defaults included."""
    mistral = _hf_config(architectures=["MistralForCausalLM"], sliding_window=4096)
    assert ModelConfig.from_dict(mistral).layer_windows == (4096, 4096)
    # Mistral slides every layer whatever else the config says (4096 if it names none),
    # unless it lists layer_types: transformers then reads it as Ministral's, as
    # Ministral 8B ships (MistralForCausalLM with alternating layers).
    ignored = {**mistral, "use_sliding_window": False}
    assert ModelConfig.from_dict(ignored).layer_windows == (4096, 4096)
    listed = {**mistral, "model_type": "mistral", "layer_types": ["full_attention"] * 2}
    assert ModelConfig.from_dict(listed).layer_windows == (None, None)
    unnamed = {k: v for k, v in mistral.items() if k != "sliding_window"}
    assert ModelConfig.from_dict(unnamed).layer_windows == (4096, 4096)
    # Qwen's window is off unless switched on, and starts at layer 28 unless told.
    qwen_off = _hf_config(
        architectures=["Qwen2ForCausalLM"], sliding_window=32, max_window_layers=0
    )
    assert ModelConfig.from_dict(qwen_off).layer_windows == (None, None)
    qwen_on = {**qwen_off, "use_sliding_window": True}
    assert ModelConfig.from_dict(qwen_on).layer_windows == (32, 32)
    del qwen_on["max_window_layers"]
    assert ModelConfig.from_dict(qwen_on).layer_windows == (None, None)
    qwen = _hf_config(
        architectures=["Qwen2ForCausalLM"], sliding_window=64, use_sliding_window=True
    )
    # Older configs: Qwen's layers from max_window_layers on slide.
    assert ModelConfig.from_dict({**qwen, "max_window_layers": 1}).layer_windows == (None, 64)
    # Newer ones list each layer's kind.
    listed = {**qwen, "layer_types": ["sliding_attention", "full_attention"]}
    assert ModelConfig.from_dict(listed).layer_windows == (64, None)
    off = {**qwen, "use_sliding_window": False}
    assert ModelConfig.from_dict(off).layer_windows == (None, None)
    with pytest.raises(ValueError, match="layer_types lists 1 layers"):
        ModelConfig.from_dict({**qwen, "layer_types": ["full_attention"]})


def test_gemma3_reads_as_its_config_says_in_either_form() -> None:
    """transformers 5's keys (rope per layer kind, layer_types) and the older ones
    (rope_local_base_freq, sliding_window_pattern) give the same model."""
    older = _hf_config(
        architectures=["Gemma3ForCausalLM"],
        num_hidden_layers=6,
        head_dim=32,
        hidden_activation="gelu_pytorch_tanh",
        query_pre_attn_scalar=64,
        sliding_window=512,
        sliding_window_pattern=6,
        rope_theta=1000000.0,
        rope_local_base_freq=10000.0,
        rope_scaling={"rope_type": "linear", "factor": 8.0},
    )
    newer = {
        **{k: v for k, v in older.items() if not k.startswith("rope") and "pattern" not in k},
        "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
        },
    }
    for hf in (older, newer):
        config = ModelConfig.from_dict(hf)
        assert config.layer_windows == (512,) * 5 + (None,)
        assert (config.rope.theta, config.rope.rope_type, config.rope.factor) == (
            1000000.0,
            "linear",
            8.0,
        )
        assert config.local_rope is not None and config.local_rope.theta == 10000.0
        assert config.local_rope.rope_type == "default"
        assert config.hidden_activation == "gelu_tanh" and config.qk_norm
        assert (config.embed_scale, config.attention_scale, config.norm_offset) == (8.0, 0.125, 1.0)


def test_gemma2_as_google_ships_it() -> None:
    """Gemma 2's config.json names no layer types: transformers' default alternates
    sliding and full layers, the first sliding. Scores and logits are soft-capped, and
    there are no per-head query/key norms (Gemma 3's)."""
    config = ModelConfig.from_dict(
        _hf_config(
            architectures=["Gemma2ForCausalLM"],
            model_type="gemma2",
            num_hidden_layers=4,
            head_dim=32,
            hidden_act="gelu_pytorch_tanh",
            hidden_activation="gelu_pytorch_tanh",
            query_pre_attn_scalar=144,
            sliding_window=4096,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
        )
    )
    assert config.layer_windows == (4096, None, 4096, None)
    assert (config.attention_softcap, config.final_logit_softcapping) == (50.0, 30.0)
    assert config.attention_scale == 144**-0.5
    assert not config.qk_norm and config.local_rope is None
    assert (config.hidden_activation, config.embed_scale, config.norm_offset) == (
        "gelu_tanh",
        8.0,
        1.0,
    )


# openai/gpt-oss-20b's config.json (layer_types shortened to the 4 layers kept here).
GPT_OSS_20B = {
    "architectures": ["GptOssForCausalLM"],
    "attention_bias": True,
    "eos_token_id": 200002,
    "experts_per_token": 4,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2880,
    "initial_context_length": 4096,
    "intermediate_size": 2880,
    "layer_types": ["sliding_attention", "full_attention"] * 2,
    "max_position_embeddings": 131072,
    "model_type": "gpt_oss",
    "num_attention_heads": 64,
    "num_experts_per_tok": 4,
    "num_hidden_layers": 4,
    "num_key_value_heads": 8,
    "num_local_experts": 32,
    "pad_token_id": 199999,
    "quantization_config": {
        "modules_to_not_convert": [
            "model.layers.*.self_attn",
            "model.layers.*.mlp.router",
            "model.embed_tokens",
            "lm_head",
        ],
        "quant_method": "mxfp4",
    },
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "factor": 32.0,
        "original_max_position_embeddings": 4096,
        "rope_type": "yarn",
        "truncate": False,
    },
    "rope_theta": 150000,
    "sliding_window": 128,
    "swiglu_limit": 7.0,
    "tie_word_embeddings": False,
    "vocab_size": 201088,
}


def test_gpt_oss_as_openai_ships_it() -> None:
    """Every other layer slides over 128 tokens, YaRN stretches 4096 to 131072 without
    truncating its band, all four attention projections have biases and each head a
    sink, every layer routes to 4 of 32 experts, and the experts are MXFP4."""
    config = ModelConfig.from_dict(GPT_OSS_20B)
    assert config.layer_windows == (128, None, 128, None)
    assert (config.rope.rope_type, config.rope.factor, config.rope.truncate) == (
        "yarn",
        32.0,
        False,
    )
    assert config.rope.theta == 150000.0
    assert config.rope.context_length(config.max_position_embeddings) == 131072
    assert (config.qkv_bias, config.o_proj_bias, config.attention_sinks) == (True, True, True)
    assert (config.num_experts, config.experts_per_token, config.moe_intermediate_size) == (
        32,
        4,
        2880,
    )
    assert (config.swiglu_alpha, config.swiglu_limit) == (1.702, 7.0)
    assert config.fp32_norm_weights and not config.tie_word_embeddings
    assert config.weight_quantization == "mxfp4"
    # transformers' defaults where a config leaves them out.
    bare = {k: v for k, v in GPT_OSS_20B.items() if k not in ("layer_types", "sliding_window")}
    assert ModelConfig.from_dict(bare).layer_windows == (128, None, 128, None)


def test_an_attention_bias_puts_a_bias_on_the_output_projection_where_hf_does() -> None:
    """Llama's `attention_bias` covers all four projections in transformers; Qwen2's,
    Mistral's and Phi-3's output projections never have one."""
    llama = ModelConfig.from_dict(
        _hf_config(architectures=["LlamaForCausalLM"], attention_bias=True)
    )
    assert (llama.qkv_bias, llama.o_proj_bias) == (True, True)
    qwen2 = ModelConfig.from_dict(_hf_config(architectures=["Qwen2ForCausalLM"]))
    assert (qwen2.qkv_bias, qwen2.o_proj_bias) == (True, False)
    plain = ModelConfig.from_dict(_hf_config(architectures=["LlamaForCausalLM"]))
    assert (plain.qkv_bias, plain.o_proj_bias, plain.attention_sinks) == (False, False, False)


def test_olmo_norms_across_heads_and_olmo3_slides_three_layers_in_four() -> None:
    olmo2 = ModelConfig.from_dict(_hf_config(architectures=["Olmo2ForCausalLM"]))
    assert olmo2.qk_norm and olmo2.qk_norm_across_heads and olmo2.fp32_norm_weights
    assert olmo2.norm_offset == 0.0 and olmo2.layer_windows == (None, None)
    olmo3 = ModelConfig.from_dict(
        _hf_config(
            architectures=["Olmo3ForCausalLM"],
            model_type="olmo3",
            num_hidden_layers=8,
            sliding_window=4096,
            rope_scaling={
                "rope_type": "yarn",
                "factor": 8.0,
                "original_max_position_embeddings": 8192,
            },
        )
    )
    assert olmo3.layer_windows == (4096, 4096, 4096, None) * 2
    # YaRN stretches the full layers' rotation only.
    assert olmo3.rope.rope_type == "yarn" and olmo3.rope.factor == 8.0
    assert olmo3.local_rope is not None and olmo3.local_rope.rope_type == "default"


@pytest.mark.parametrize(
    ("extra", "windows", "rotations"),
    [
        # transformers' defaults: a 4096 window, every fourth layer full and position-free
        ({}, (4096, 4096, 4096, None) * 2, (True, True, True, False) * 2),
        (
            {"sliding_window": 128, "sliding_window_pattern": "LLG"},
            (128, 128, None, 128, 128, None, 128, 128),
            (True, True, False, True, True, False, True, True),
        ),
        ({"sliding_window": None}, (None,) * 8, ()),  # the 1.2B: full attention, all rotate
        (
            {"layer_types": ["full_attention", "sliding_attention"] * 4},
            (None, 4096) * 4,
            (False, True) * 4,
        ),
    ],
)
def test_exaone4_slides_and_its_full_layers_use_no_positions(
    extra: dict[str, object],
    windows: tuple[int | None, ...],
    rotations: tuple[bool, ...],
) -> None:
    config = ModelConfig.from_dict(
        _hf_config(architectures=["Exaone4ForCausalLM"], num_hidden_layers=8, **extra)
    )
    assert config.layer_windows == windows and config.rope_layers == rotations
    assert config.qk_norm and not config.qk_norm_across_heads and not config.fp32_norm_weights


def test_glm4_takes_transformers_defaults_and_refuses_fp8_checkpoints() -> None:
    config = ModelConfig.from_dict(_hf_config(architectures=["Glm4ForCausalLM"], head_dim=16))
    # Glm4Config's: half of each head turns (in pairs), q/k/v biases, no output bias.
    assert (config.rotary_dim, config.interleaved_rope) == (8, True)
    assert (config.qkv_bias, config.o_proj_bias) == (True, False)
    fp8 = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    with pytest.raises(ConfigurationError, match="FP8 Glm4ForCausalLM checkpoints"):
        ModelConfig.from_dict(
            _hf_config(architectures=["Glm4ForCausalLM"], quantization_config=fp8)
        )


def test_cohere_models_scale_logits_rotate_pairs_and_cohere2_rotates_its_sliding_layers() -> None:
    cohere = ModelConfig.from_dict(_hf_config(architectures=["CohereForCausalLM"]))
    # CohereConfig's defaults: tied, logits times 0.0625, a 1e-5 LayerNorm.
    assert (cohere.logit_scale, cohere.tie_word_embeddings) == (0.0625, True)
    assert cohere.interleaved_rope and cohere.layer_norm_eps == 1e-5 and cohere.rope_layers == ()
    cohere2 = ModelConfig.from_dict(
        _hf_config(architectures=["Cohere2ForCausalLM"], num_hidden_layers=8)
    )
    assert cohere2.layer_windows == (4096, 4096, 4096, None) * 2
    assert cohere2.rope_layers == (True, True, True, False) * 2
    assert not cohere.qk_norm
    plus = ModelConfig.from_dict(_hf_config(architectures=["CohereForCausalLM"], use_qk_norm=True))
    assert plus.qk_norm and not plus.qk_norm_across_heads  # Command R+: a norm per head


def test_granite_moe_routes_as_mixtral_over_its_stored_experts() -> None:
    config = ModelConfig.from_dict(
        _hf_config(
            architectures=["GraniteMoeForCausalLM"],
            num_local_experts=8,
            num_experts_per_tok=2,
            residual_multiplier=0.22,
        )
    )
    assert (config.num_experts, config.experts_per_token) == (8, 2)
    assert config.moe_intermediate_size == 128 and config.normalize_routing
    assert config.residual_multiplier == 0.22


def test_starcoder2_reads_its_own_keys() -> None:
    config = ModelConfig.from_dict(
        _hf_config(architectures=["Starcoder2ForCausalLM"], sliding_window=4096)
    )
    # Starcoder2Config's: biases everywhere, norm_epsilon, tied, every layer sliding.
    assert (config.qkv_bias, config.o_proj_bias, config.tie_word_embeddings) == (True,) * 3
    assert config.layer_norm_eps == 1e-5 and config.layer_windows == (4096, 4096)
    assert config.hidden_activation == "gelu_tanh"


def test_an_exaone4_pattern_of_other_letters_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="sliding_window_pattern"):
        ModelConfig.from_dict(
            _hf_config(architectures=["Exaone4ForCausalLM"], sliding_window_pattern="LLX")
        )


def _mistral3(text: dict[str, object], **outer: object) -> dict[str, object]:
    """A Mistral Small 3.1-style config: the text model nested, a vision tower beside it."""
    text_config = {**_hf_config(head_dim=32, sliding_window=None), "model_type": "mistral", **text}
    return {
        "architectures": ["Mistral3ForConditionalGeneration"],
        "model_type": "mistral3",
        "text_config": text_config,
        "vision_config": {"model_type": "pixtral", "hidden_size": 32},
        **outer,
    }


def test_mistral3_reads_its_text_model_and_ties_as_transformers_does() -> None:
    """Mistral Small's files set no tie flag and ship their own LM head: untied (the text
    class's default). An outer flag, where set, decides, as transformers ties by it."""
    config = ModelConfig.from_dict(_mistral3({}))
    assert config.architecture == "Mistral3ForConditionalGeneration"
    assert (config.head_dim, config.layer_windows) == (32, (None, None))
    assert not config.tie_word_embeddings
    assert ModelConfig.from_dict(_mistral3({"tie_word_embeddings": True})).tie_word_embeddings
    tied_outside = _mistral3({"tie_word_embeddings": False}, tie_word_embeddings=True)
    assert ModelConfig.from_dict(tied_outside).tie_word_embeddings
    with pytest.raises(ValueError, match="'ministral3' text model is not supported"):
        ModelConfig.from_dict(_mistral3({"model_type": "ministral3"}))


def test_qwen2_5_vl_reads_its_release_flat_config_with_the_plain_rotation() -> None:
    """Qwen2.5-VL's release config keeps the text model's keys at the top beside the
    vision tower's, with an `mrope` rotation: text alone turns by the plain one (its
    theta), Qwen2's biased q/k/v, the window off unless switched on."""
    release = _hf_config(
        architectures=["Qwen2_5_VLForConditionalGeneration"],
        model_type="qwen2_5_vl",
        rope_theta=1e6,
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        sliding_window=32768,
        use_sliding_window=False,
        tie_word_embeddings=True,
        vision_config={"depth": 32, "hidden_size": 1280, "out_hidden_size": 64},
    )
    config = ModelConfig.from_dict(release)
    assert config.architecture == "Qwen2_5_VLForConditionalGeneration"
    assert (config.rope.rope_type, config.rope.theta) == ("default", 1e6)
    assert (config.qkv_bias, config.o_proj_bias, config.qk_norm) == (True, False, False)
    assert (config.sliding_window, config.tie_word_embeddings) == (None, True)


@pytest.mark.parametrize(
    ("outer", "inner", "tied"),
    [(None, True, True), (None, None, False), (True, None, True), (False, True, False)],
)
def test_qwen3_vl_ties_its_head_by_the_outer_flag_else_the_inner_one(
    outer: bool | None, inner: bool | None, tied: bool
) -> None:
    """transformers ties Qwen3-VL by the outer flag (and re-saves a fine-tune with the
    outer false, the inner true and a head of its own); where the file sets no outer
    flag, vLLM reads the inner one."""
    text = _hf_config(head_dim=32, model_type="qwen3_vl_text")
    if inner is not None:
        text["tie_word_embeddings"] = inner
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 5e6,
        "mrope_section": [4, 6, 6],
        "mrope_interleaved": True,
    }
    hf = {"architectures": ["Qwen3VLForConditionalGeneration"], "text_config": text}
    if outer is not None:
        hf["tie_word_embeddings"] = outer
    config = ModelConfig.from_dict(hf)
    assert (config.tie_word_embeddings, config.qk_norm, config.head_dim) == (tied, True, 32)
    assert (config.rope.rope_type, config.rope.theta) == ("default", 5e6)


def test_qwen3_vl_moe_renormalises_its_chosen_experts() -> None:
    """Its router has no norm_topk_prob switch: the chosen experts' weights always sum
    to one, as transformers' Qwen3-VL MoE router computes them."""
    text = _hf_config(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32)
    hf = {"architectures": ["Qwen3VLMoeForConditionalGeneration"], "text_config": text}
    config = ModelConfig.from_dict(hf)
    assert (config.num_experts, config.experts_per_token, config.moe_intermediate_size) == (
        8,
        2,
        32,
    )
    assert config.normalize_routing


def test_a_vision_language_checkpoints_quantization_is_read_from_its_outer_config() -> None:
    fp8 = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    config = ModelConfig.from_dict(_mistral3({}, quantization_config=fp8))
    assert (config.weight_quantization, config.weight_block_size) == ("fp8", (128, 128))
    awq = ModelConfig.from_dict(_mistral3({}, quantization_config={"quant_method": "awq"}))
    assert awq.weight_quantization == "awq"
    with pytest.raises(ValueError, match="quantization method 'bitsandbytes'"):
        ModelConfig.from_dict(_mistral3({}, quantization_config={"quant_method": "bitsandbytes"}))


def test_gemma1_reads_its_legacy_exact_gelu_as_the_tanh_form() -> None:
    """Gemma 1's first configs say `hidden_act: "gelu"`; the model was trained with the
    tanh approximation, which transformers and vLLM both run."""
    config = ModelConfig.from_dict(
        _hf_config(architectures=["GemmaForCausalLM"], head_dim=32, hidden_act="gelu")
    )
    assert config.hidden_activation == "gelu_tanh"
    assert config.layer_windows == (None, None) and config.attention_softcap is None
    assert config.attention_scale is None and not config.qk_norm
    assert (config.embed_scale, config.norm_offset) == (8.0, 1.0)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"use_bidirectional_attention": True}, "bidirectional"),
        ({"hidden_activation": "relu"}, "activation 'relu'"),
    ],
)
def test_what_the_engine_cannot_compute_is_refused(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(_hf_config(architectures=["Gemma3ForCausalLM"], **extra))


def _encoder_config(**extra: object) -> dict[str, object]:
    """An encoder's config.json as BERT-family checkpoints ship it (sizes shrunk)."""
    return {
        "vocab_size": 250002,
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-05,
        "position_embedding_type": "absolute",
        **extra,
    }


def test_encoders_read_their_positions_and_token_types() -> None:
    """XLM-R (bge-m3, bge-reranker): positions start past the padding index (1), so a
    514-row table serves 512 tokens; one token type. BERT: positions from 0, two types."""
    xlmr = ModelConfig.from_dict(
        _encoder_config(
            architectures=["XLMRobertaForSequenceClassification"],
            max_position_embeddings=514,
            pad_token_id=1,
            type_vocab_size=1,
            id2label={"0": "LABEL_0"},
        )
    )
    assert xlmr.is_encoder and xlmr.is_classifier and xlmr.labels == ("LABEL_0",)
    assert (xlmr.max_position_embeddings, xlmr.position_offset) == (512, 2)
    assert (xlmr.type_vocab_size, xlmr.layer_norm_eps, xlmr.hidden_activation) == (
        1,
        1e-05,
        "gelu",
    )
    assert not xlmr.has_lm_head
    bert = ModelConfig.from_dict(
        _encoder_config(model_type="bert", max_position_embeddings=512, hidden_act="gelu_new")
    )
    assert bert.architecture == "BertModel" and bert.is_encoder and not bert.is_classifier
    assert (bert.max_position_embeddings, bert.position_offset, bert.type_vocab_size) == (
        512,
        0,
        2,
    )
    assert bert.hidden_activation == "gelu_tanh"
    # A RoBERTa config with pad_token_id null: transformers' padding index, 1.
    roberta = ModelConfig.from_dict(
        _encoder_config(model_type="roberta", max_position_embeddings=514, pad_token_id=None)
    )
    assert (roberta.max_position_embeddings, roberta.position_offset) == (512, 2)
    assert not ModelConfig.from_dict(_hf_config(architectures=["LlamaModel"])).is_encoder


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"position_embedding_type": "relative_key"}, "relative_key"),
        ({"hidden_act": "silu"}, "activation 'silu' for an encoder"),
        ({"is_decoder": True}, "is_decoder"),
    ],
)
def test_what_an_encoder_cannot_compute_is_refused(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ModelConfig.from_dict(_encoder_config(architectures=["BertModel"], **extra))


def test_smollm3_leaves_every_fourth_layer_without_positions() -> None:
    config = ModelConfig.from_dict(
        _hf_config(architectures=["SmolLM3ForCausalLM"], num_hidden_layers=8)
    )
    assert config.rope_layers == (True, True, True, False) * 2
    listed = _hf_config(architectures=["SmolLM3ForCausalLM"], no_rope_layers=[0, 1])
    assert ModelConfig.from_dict(listed).rope_layers == (False, True)
    assert ModelConfig.from_dict(_hf_config(architectures=["LlamaForCausalLM"])).rope_layers == ()


def test_granite_reads_its_multipliers() -> None:
    config = ModelConfig.from_dict(
        _hf_config(
            architectures=["GraniteForCausalLM"],
            embedding_multiplier=12.0,
            residual_multiplier=0.22,
            attention_multiplier=0.0078125,
            logits_scaling=8.0,
        )
    )
    assert (config.embed_scale, config.residual_multiplier) == (12.0, 0.22)
    assert (config.attention_scale, config.logits_scaling) == (0.0078125, 8.0)


def test_a_partial_rotation_turns_the_first_part_of_each_head() -> None:
    top = _hf_config(architectures=["Phi3ForCausalLM"], partial_rotary_factor=0.75)
    assert ModelConfig.from_dict(top).rotary_dim == 12  # of 16
    nested = _hf_config(
        architectures=["Phi3ForCausalLM"],
        rope_parameters={"rope_theta": 10000.0, "partial_rotary_factor": 0.5},
    )
    assert ModelConfig.from_dict(nested).rotary_dim == 8
    assert ModelConfig.from_dict(_hf_config(architectures=["Phi3ForCausalLM"])).rotary_dim == 0
    longrope = _hf_config(
        architectures=["Phi3ForCausalLM"],
        original_max_position_embeddings=4096,
        max_position_embeddings=131072,
        rope_scaling={"type": "su", "short_factor": [1.0], "long_factor": [2.0]},
    )
    rope = ModelConfig.from_dict(longrope).rope
    assert (rope.rope_type, rope.short_factor, rope.long_factor) == ("longrope", (1.0,), (2.0,))
    assert (rope.original_max_position_embeddings, rope.factor) == (4096, 32.0)


def test_experts_are_read_in_each_familys_names() -> None:
    qwen = ModelConfig.from_dict(
        _hf_config(
            architectures=["Qwen3MoeForCausalLM"],
            num_hidden_layers=4,
            num_experts=128,
            num_experts_per_tok=8,
            moe_intermediate_size=768,
            norm_topk_prob=True,
            decoder_sparse_step=2,
            mlp_only_layers=[3],
        )
    )
    assert (qwen.num_experts, qwen.experts_per_token, qwen.moe_intermediate_size) == (
        128,
        8,
        768,
    )
    assert qwen.normalize_routing and qwen.qk_norm
    # Every second layer is sparse, except those listed as dense.
    assert qwen.moe_layers == (False, True, False, False)
    mixtral = ModelConfig.from_dict(
        _hf_config(architectures=["MixtralForCausalLM"], num_local_experts=8, sliding_window=64)
    )
    assert (mixtral.num_experts, mixtral.experts_per_token, mixtral.moe_intermediate_size) == (
        8,
        2,
        128,
    )
    assert mixtral.normalize_routing and mixtral.moe_layers == ()
    assert mixtral.layer_windows == (64, 64)


def test_qwen2_moe_reads_with_transformers_defaults() -> None:
    """Qwen1.5-MoE's config.json leaves qkv_bias and the routing's normalisation out:
    biased q/k/v, weights not renormalised; every layer sparse with a shared expert.
    Its window rule is its own: every other layer below max_window_layers."""
    qwen = ModelConfig.from_dict(
        _hf_config(
            architectures=["Qwen2MoeForCausalLM"],
            num_hidden_layers=4,
            num_experts=60,
            num_experts_per_tok=4,
            moe_intermediate_size=1408,
            shared_expert_intermediate_size=5632,
        )
    )
    assert (qwen.num_experts, qwen.experts_per_token, qwen.moe_intermediate_size) == (
        60,
        4,
        1408,
    )
    assert qwen.shared_expert_intermediate_size == 5632
    assert qwen.qkv_bias and not qwen.normalize_routing and not qwen.qk_norm
    assert qwen.moe_layers == (True,) * 4
    assert qwen.layer_windows == (None,) * 4
    windowed = _hf_config(
        architectures=["Qwen2MoeForCausalLM"],
        num_hidden_layers=4,
        use_sliding_window=True,
        sliding_window=32,
        max_window_layers=2,
    )
    assert ModelConfig.from_dict(windowed).layer_windows == (32, None, None, None)
    unbiased = _hf_config(architectures=["Qwen2MoeForCausalLM"], qkv_bias=False)
    assert not ModelConfig.from_dict(unbiased).qkv_bias


def test_a_cuda_device_this_machine_cannot_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU unit on a host with the CPU wheel stops in one line (a ConfigurationError:
    exit 2, no restart loop), never a traceback or a silent fall back to the CPU. A CUDA
    build that sees no GPU now (a driver loading at boot) is DeviceUnavailable: exit 1,
    which supervisors restart."""
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(ConfigurationError, match=r"^--device cuda: .*built without CUDA"):
        EngineConfig(device="cuda").torch_device()
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailable, match=r"^--device cuda:1: no GPU visible"):
        EngineConfig(device="cuda:1").torch_device()
    # A GPU index the host does not have will not appear by restarting: exit 2.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigurationError, match=r"^--device cuda:3: only 1 GPU"):
        EngineConfig(device="cuda:3").torch_device()
    with pytest.raises(ConfigurationError, match="--device 'gpu0'"):
        EngineConfig(device="gpu0").torch_device()
    assert EngineConfig(device="cpu").torch_device() == torch.device("cpu")
