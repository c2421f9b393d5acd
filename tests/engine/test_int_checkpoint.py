"""Packed-integer checkpoints (GPTQ, AWQ, compressed-tensors' integer schemes):
dequantized at load to the weights their codes encode."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from engine.config import ModelConfig
from engine.int_checkpoint import (
    AWQ_UNPACK_ORDER,
    model_weights,
    unpack_columns,
    unpack_rows,
)
from engine.llm import LLM, greedy
from engine.weight_quantization import IntWeights, WeightQuantization, weight_quantization

from .int_quantized_variants import (
    AWQ_ORDER,
    pack_across,
    pack_down,
    write_awq_variant,
    write_compressed_tensors_int_variant,
    write_gptq_variant,
)
from .quantized_variants import assert_same_outputs
from .test_parity import assert_prompt_logprobs_match, hf_greedy


def test_words_unpack_in_each_exporters_order() -> None:
    """The layouts pinned by hand: GPTQ's qweight holds eight rows in a word, the first
    in the lowest bits; AWQ's holds columns 0, 2, 4, 6, 1, 3, 5, 7 (AutoAWQ's
    order_map) in nibbles 0..7."""
    gptq_word = torch.tensor([[0x76543210]], dtype=torch.int32)
    assert unpack_rows(gptq_word, 4).flatten().tolist() == list(range(8))
    assert unpack_columns(gptq_word, 4).flatten().tolist() == list(range(8))
    awq_word = torch.tensor([[0x75316420]], dtype=torch.int32)
    assert unpack_columns(awq_word, 4, AWQ_UNPACK_ORDER).flatten().tolist() == list(range(8))
    high = torch.tensor([[-0x0F0F0F10]], dtype=torch.int32)  # 0xF0F0F0F0: the sign bit set
    assert unpack_columns(high, 4).flatten().tolist() == [0, 15] * 4
    assert unpack_rows(torch.tensor([[0x04030201]], dtype=torch.int32), 8).flatten().tolist() == [
        1,
        2,
        3,
        4,
    ]


def test_the_test_packers_agree_with_the_unpacking() -> None:
    """Round trips through the tests' word-by-word packers, in every width."""
    gen = torch.Generator().manual_seed(0)
    for bits in (2, 4, 8):
        codes = torch.randint(0, 1 << bits, (64, 16), generator=gen)
        assert torch.equal(unpack_rows(pack_down(codes, bits), bits), codes.to(torch.int32))
        assert torch.equal(unpack_columns(pack_across(codes.t(), bits), bits), codes.t().int())
    codes = torch.randint(0, 16, (4, 16), generator=gen)
    assert torch.equal(
        unpack_columns(pack_across(codes, 4, AWQ_ORDER), 4, AWQ_UNPACK_ORDER), codes.int()
    )


def test_gptq_awq_and_integer_compressed_tensors_configs_are_read() -> None:
    def read(config: dict[str, object]) -> WeightQuantization | None:
        return weight_quantization({"quantization_config": config})

    gptq = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": True}
    assert read(gptq) == WeightQuantization("gptq", None, "", IntWeights(4, (128,), 1))
    v2 = {**gptq, "checkpoint_format": "gptq_v2", "group_size": -1}
    assert read(v2) == WeightQuantization("gptq", None, "", IntWeights(4, (), 0))
    awq = {"quant_method": "awq", "w_bit": 4, "q_group_size": 64, "version": "GEMM"}
    assert read(awq) == WeightQuantization("awq", None, "", IntWeights(4, (64,), 0))
    w4a16 = {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128},
            }
        },
    }
    assert read(w4a16) == WeightQuantization("int", None, "", IntWeights(4, (128,)))
    w8a8 = {
        "quant_method": "compressed-tensors",
        "format": "mixed-precision",
        "config_groups": {
            "group_0": {
                "format": "int-quantized",
                "weights": {"num_bits": 8, "type": "int", "strategy": "channel"},
                "input_activations": {"num_bits": 8, "type": "int", "dynamic": True},
            }
        },
    }
    assert read(w8a8) == WeightQuantization("int", None, "", IntWeights(8, ()))


@pytest.mark.parametrize(
    "config,refusal",
    [
        ({"quant_method": "gptq", "bits": 3}, "3-bit"),
        ({"quant_method": "gptq", "checkpoint_format": "marlin"}, "format 'marlin'"),
        ({"quant_method": "gptq", "dynamic": {"-:.*mlp.*": {}}}, "dynamic"),
        ({"quant_method": "gptq", "bits": 16}, "16-bit"),
        ({"quant_method": "gptq", "is_marlin_format": True}, "format 'marlin'"),
        ({"quant_method": "gptq", "pack_dtype": "torch.int16"}, "int16 words"),
        ({"quant_method": "awq", "version": "gemv"}, "format 'gemv'"),
        ({"quant_method": "awq", "format": "gemv_fast", "version": "gemm"}, "'gemv_fast'"),
        ({"quant_method": "awq", "backend": "llm-awq"}, "format 'llm-awq'"),
        ({"quant_method": "awq", "zero_point": False}, "without zero points"),
        ({"quant_method": "awq", "bits": 8}, "8-bit"),
        ({"quant_method": "bitsandbytes"}, "method 'bitsandbytes'"),
        (
            {
                "quant_method": "compressed-tensors",
                "format": "marlin-24",
                "config_groups": {
                    "g": {"weights": {"num_bits": 4, "type": "int", "strategy": "group"}}
                },
            },
            "'marlin-24'",
        ),
        (
            {
                "quant_method": "compressed-tensors",
                "format": "mixed-precision",
                "config_groups": {
                    "a": {
                        "format": "pack-quantized",
                        "weights": {"num_bits": 4, "type": "int", "strategy": "channel"},
                    },
                    "b": {
                        "format": "float-quantized",
                        "weights": {"num_bits": 8, "type": "float", "strategy": "channel"},
                    },
                },
            },
            "mixing FP8 and integer",
        ),
    ],
)
def test_integer_formats_the_engine_cannot_read_are_refused_by_name(
    config: dict[str, object], refusal: str
) -> None:
    with pytest.raises(ValueError, match=refusal):
        weight_quantization({"quantization_config": config})


@pytest.mark.parametrize(
    "family,bits,checkpoint_format,act_order",
    [
        ("llama", 4, "gptq", False),
        ("llama", 4, "gptq", True),
        ("llama", 8, "gptq", False),
        ("llama", 2, "gptq", False),
        ("llama", 4, "gptq_v2", True),
        ("glm4", 4, "gptq", True),  # dequantized before its query/key rows are reordered
        # Each expert's matrices, the last group of its 48-wide down_proj cut short.
        ("qwen3_moe", 4, "gptq", False),
    ],
)
def test_a_gptq_checkpoint_serves_the_weights_it_encodes(
    family: str,
    bits: int,
    checkpoint_format: str,
    act_order: bool,
    make_random_model: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    """Symmetric codes with zeros stored less one, act-order's shuffled groups, 8-bit
    codes, gptq_v2's zeros as they are; AutoGPTQ's all-zero biases on a model without
    biases are left aside."""
    quantized, reference = tmp_path / "gptq", tmp_path / "reference"
    source = make_random_model(family)
    write_gptq_variant(source, quantized, reference, bits, checkpoint_format, act_order)
    assert ModelConfig.from_folder(quantized).weight_quantization == "gptq"
    assert_same_outputs(quantized, reference, quantization="gptq_marlin")


def test_an_awq_checkpoint_serves_the_weights_it_encodes(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    quantized, reference = tmp_path / "awq", tmp_path / "reference"
    write_awq_variant(make_random_model("qwen2"), quantized, reference)
    assert ModelConfig.from_folder(quantized).int_weights == IntWeights(4, (32,))
    assert_same_outputs(quantized, reference)


@pytest.mark.parametrize(
    "bits,strategy,symmetric,fmt",
    [
        (4, "group", True, "pack-quantized"),  # W4A16
        (4, "group", False, "pack-quantized"),  # W4A16 asymmetric: packed zero points
        (8, "channel", True, "pack-quantized"),  # W8A16
        (8, "channel", True, "int-quantized"),  # W8A8's int8 weights
        (4, "tensor", True, "pack-quantized"),
    ],
)
def test_a_compressed_tensors_integer_checkpoint_serves_the_weights_it_encodes(
    bits: int,
    strategy: str,
    symmetric: bool,
    fmt: str,
    make_random_model: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    """Written by the compressed-tensors library; the reference holds its own fake
    quantization of the same weights."""
    quantized, reference = tmp_path / "int", tmp_path / "reference"
    config = write_compressed_tensors_int_variant(
        make_random_model("llama"), quantized, reference, bits, strategy, symmetric, fmt
    )
    assert config["format"] == fmt
    assert ModelConfig.from_folder(quantized).weight_quantization == "int"
    assert_same_outputs(quantized, reference, quantization="compressed-tensors")


@pytest.mark.parametrize("sidecar", ["quantize_config.json", "quant_config.json"])
def test_older_exports_quantization_config_is_read_from_its_own_file(
    sidecar: str, make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """AutoGPTQ's quantize_config.json and AutoAWQ's quant_config.json, beside a
    config.json that says nothing of quantization, in each tool's own keys."""
    quantized, reference = tmp_path / "packed", tmp_path / "reference"
    source = make_random_model("llama")
    if sidecar == "quantize_config.json":
        write_gptq_variant(source, quantized, reference, 4)
        own = {"bits": 4, "group_size": 32, "desc_act": False, "sym": True}
    else:
        write_awq_variant(source, quantized, reference)
        own = {"zero_point": True, "q_group_size": 32, "w_bit": 4, "version": "GEMM"}
    config = json.loads((quantized / "config.json").read_text())
    del config["quantization_config"]
    (quantized / "config.json").write_text(json.dumps(config))
    (quantized / sidecar).write_text(json.dumps(own))
    expected = "gptq" if sidecar == "quantize_config.json" else "awq"
    assert ModelConfig.from_folder(quantized).weight_quantization == expected
    assert_same_outputs(quantized, reference)


def test_a_packed_matrix_without_its_scales_is_an_error(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    quantized, reference = tmp_path / "gptq", tmp_path / "reference"
    write_gptq_variant(make_random_model("llama"), quantized, reference, 4)
    weights = load_file(quantized / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.scales"]
    save_file(weights, quantized / "model.safetensors")
    with pytest.raises(
        ValueError, match=r"up_proj' has no 'model\.layers\.1\.mlp\.up_proj\.scales'"
    ):
        LLM(str(quantized), kv_cache_memory=64 << 20)


def test_act_order_indices_outside_the_scales_groups_are_an_error(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    quantized, reference = tmp_path / "gptq", tmp_path / "reference"
    write_gptq_variant(make_random_model("llama"), quantized, reference, 4, act_order=True)
    weights = load_file(quantized / "model.safetensors")
    weights["model.layers.0.self_attn.o_proj.g_idx"][0] = -1
    save_file(weights, quantized / "model.safetensors")
    with pytest.raises(ValueError, match=r"o_proj'.*group indices do not number"):
        LLM(str(quantized), kv_cache_memory=64 << 20)


def test_naming_another_format_than_the_checkpoints_is_refused(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    quantized, reference = tmp_path / "awq", tmp_path / "reference"
    write_awq_variant(make_random_model("llama"), quantized, reference)
    with pytest.raises(ValueError, match="'gptq' does not match the checkpoint's own awq"):
        LLM(str(quantized), kv_cache_memory=64 << 20, quantization="gptq")


def test_transformers_reads_a_compressed_tensors_w4a16_checkpoint_as_the_engine_does(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """The oracle reading the packed folder itself (transformers with compressed-tensors
    decompresses it): the same greedy tokens and prompt logprobs."""
    quantized, reference = tmp_path / "int", tmp_path / "reference"
    write_compressed_tensors_int_variant(
        make_random_model("llama"), quantized, reference, 4, "group"
    )
    hf = transformers.AutoModelForCausalLM.from_pretrained(quantized, dtype=torch.float32)
    llm = LLM(str(quantized), kv_cache_memory=64 << 20)
    torch.manual_seed(0)
    prompts = [torch.randint(3, 49152, (n,)).tolist() for n in (5, 30)]
    results = llm.generate(prompts, greedy(12, min_tokens=12))
    for prompt, result in zip(prompts, results, strict=True):
        assert result.token_ids == hf_greedy(hf.eval(), prompt, 12)
    assert_prompt_logprobs_match(llm, hf, prompts[-1])


def _one_layer(
    codes: torch.Tensor, scales: torch.Tensor, int_weights: IntWeights, **side: torch.Tensor
) -> torch.Tensor:
    """A compressed-tensors layer `l` of signed 4-bit `codes` [out, in], read back."""
    out_features, in_features = codes.shape
    packed = pack_across((codes + 8).contiguous(), 4)
    tensors = {
        "l.weight_scale": scales,
        "l.weight_shape": torch.tensor([out_features, in_features]),
    }
    tensors.update({f"l.{name}": tensor for name, tensor in side.items()})
    [(name, weight)] = model_weights(
        [("l.weight_packed", packed)], tensors, "int", int_weights, torch.float32
    )
    assert name == "l.weight"
    return weight


def test_groups_of_the_configured_size_may_end_short() -> None:
    """200 input columns in groups of 64: four scales a row, the last covering 8 columns
    (not four even runs of 50, which the scales' shape alone would suggest); with a
    second scheme's size configured too, the one whose count fits is taken."""
    gen = torch.Generator().manual_seed(1)
    codes = torch.randint(-8, 8, (4, 200), generator=gen)
    scales = torch.rand(4, 4, generator=gen) + 0.5
    groups = torch.arange(200) // 64
    expected = codes.float() * scales[:, groups]
    for sizes in ((64,), (64, 128)):
        weight = _one_layer(codes, scales, IntWeights(4, sizes))
        torch.testing.assert_close(weight, expected, rtol=0, atol=0)
    # Scales whose count no configured size gives, or two sizes give: an error.
    for sizes in ((128,), (50, 64)):
        with pytest.raises(ValueError, match="4 groups of scales for 200 inputs match"):
            _one_layer(codes, scales, IntWeights(4, sizes))


def test_packed_tensors_that_do_not_fit_the_config_are_errors() -> None:
    """A wrong bit width, or a stacked experts' 3-d weight_shape, is refused rather than
    read as garbage."""
    codes = torch.zeros(4, 64, dtype=torch.int64)
    scales = torch.ones(4, 1)
    with pytest.raises(ValueError, match=r"weight_packed is \(4, 8\), expected \(4, 16\)"):
        _one_layer(codes, scales, IntWeights(8, ()))
    with pytest.raises(ValueError, match="not a matrix's"):
        _one_layer(codes, scales, IntWeights(4, ()), weight_shape=torch.tensor([2, 4, 64]))
