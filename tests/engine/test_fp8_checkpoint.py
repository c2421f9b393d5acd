"""FP8 checkpoints (DeepSeek/Qwen `-FP8` format): dequantized at load to what they encode."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.config import ModelConfig
from engine.fp8_checkpoint import dequantize
from engine.llm import LLM
from engine.weight_quantization import WeightQuantization, weight_quantization

from .quantized_variants import (
    assert_same_outputs,
    compressed_tensors_fp8_config,
    quantize_fp8,
    write_compressed_tensors_variant,
    write_fp8_variant,
)

BLOCK = [24, 24]  # the random models' 64- and 128-wide matrices end in partial tiles


def test_block_scales_cover_tiles_cut_short_at_the_edges() -> None:
    """Tiles are weight_block_size, the last ones cut short: 9 rows in tiles of 4 are
    4 + 4 + 1 (not three tiles of 3, which the scales' shape alone would suggest)."""
    torch.manual_seed(0)
    weight = torch.randn(9, 7)
    q, scale = quantize_fp8(weight, [4, 4])
    assert scale.shape == (3, 2)
    got = dequantize(q, scale, torch.float32, (4, 4))
    expected = torch.empty(9, 7)
    for r in range(9):
        for c in range(7):
            expected[r, c] = q[r, c].float() * scale[r // 4, c // 4]
    assert torch.equal(got, expected)
    with pytest.raises(ValueError, match=r"has \(3, 2\) scales, not \(3, 3\)"):
        dequantize(q, torch.ones(3, 3), torch.float32, (4, 4))
    with pytest.raises(ValueError, match="weight_block_size"):
        dequantize(q, scale, torch.float32)
    # e4m3 keeps 3 mantissa bits: within 1/16 of each value, relative to its tile's max.
    assert torch.allclose(got, weight, atol=weight.abs().max().item() / 16)
    whole = dequantize(q, torch.tensor(0.5), torch.bfloat16)  # one scale for the matrix
    assert torch.equal(whole, (q.float() * 0.5).to(torch.bfloat16))


def test_fp8_and_mxfp4_are_read_and_other_methods_are_refused_by_name() -> None:
    assert weight_quantization({}) is None
    mxfp4 = {"quantization_config": {"quant_method": "mxfp4"}}
    assert weight_quantization(mxfp4) == WeightQuantization("mxfp4", None)
    plain = {"quant_method": "fp8"}
    # A scale per matrix: named weight_scale_inv or, as AutoFP8 and vLLM export it,
    # weight_scale; the files say which.
    assert weight_quantization({"quantization_config": plain}) == WeightQuantization(
        "fp8", None, "_scale_inv|_scale"
    )
    blocked = {"quantization_config": {**plain, "weight_block_size": [128, 128]}}
    assert weight_quantization(blocked) == WeightQuantization("fp8", (128, 128))
    for method in ("bitsandbytes", "hqq"):
        with pytest.raises(ValueError, match=f"quantization method '{method}'"):
            weight_quantization({"quantization_config": {"quant_method": method}})
    with pytest.raises(ValueError, match="e5m2"):
        weight_quantization({"quantization_config": {"quant_method": "fp8", "fmt": "e5m2"}})


@pytest.mark.parametrize("family", ["llama", "qwen3_moe"])
def test_an_fp8_checkpoint_serves_the_weights_it_encodes(
    family: str, make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """Token for token and logprob for logprob the model its dequantized weights make
    (experts' matrices included), which HF parity covers from there."""
    fp8, reference = tmp_path / "fp8", tmp_path / "reference"
    write_fp8_variant(make_random_model(family), fp8, reference, BLOCK)
    config = ModelConfig.from_folder(fp8)
    assert (config.weight_quantization, config.weight_block_size) == ("fp8", tuple(BLOCK))
    assert_same_outputs(fp8, reference)


def test_an_fp8_matrix_without_its_scale_is_an_error(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    fp8, reference = tmp_path / "fp8", tmp_path / "reference"
    write_fp8_variant(make_random_model("llama"), fp8, reference, BLOCK)
    weights = load_file(fp8 / "model.safetensors")
    del weights["model.layers.0.mlp.down_proj.weight_scale_inv"]
    save_file(weights, fp8 / "model.safetensors")
    with pytest.raises(ValueError, match=r"down_proj\.weight' has no"):
        LLM(str(fp8), kv_cache_memory=64 << 20)


def test_compressed_tensors_fp8_schemes_are_read_and_others_refused() -> None:
    """llm-compressor's FP8 (per channel, per tensor, per tile; any activation scheme,
    the activations staying in the model's dtype) reads as FP8 with `weight_scale`s;
    other kinds of weights (NVFP4's 4-bit floats) are refused by name (its integer
    schemes: tests/engine/test_int_checkpoint.py)."""
    for strategy in ("channel", "tensor"):
        config = compressed_tensors_fp8_config(strategy, dynamic=True)
        assert weight_quantization({"quantization_config": config}) == WeightQuantization(
            "fp8", None, "_scale"
        )
    block = compressed_tensors_fp8_config("block", dynamic=True)
    block["config_groups"]["group_0"]["weights"]["block_structure"] = [128, 128]
    assert weight_quantization({"quantization_config": block}) == WeightQuantization(
        "fp8", (128, 128), "_scale"
    )
    nvfp4 = compressed_tensors_fp8_config("tensor_group", dynamic=True)
    nvfp4["config_groups"]["group_0"]["weights"].update(num_bits=4)
    with pytest.raises(ValueError, match=r"'group_0' \(float4 weights, strategy 'tensor_group'\)"):
        weight_quantization({"quantization_config": nvfp4})
    mixed = compressed_tensors_fp8_config("channel", dynamic=True)
    mixed["config_groups"]["group_1"] = block["config_groups"]["group_0"]
    with pytest.raises(ValueError, match="one FP8 weight scheme"):
        weight_quantization({"quantization_config": mixed})


@pytest.mark.parametrize("strategy", ["channel", "tensor"])
def test_a_compressed_tensors_fp8_checkpoint_serves_the_weights_it_encodes(
    strategy: str, make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """Scales per output channel or per matrix (bf16, as llm-compressor writes them),
    static input scales and KV-cache scales left aside: the dequantized model's tokens
    and logprobs."""
    fp8, reference = tmp_path / "fp8", tmp_path / "reference"
    write_compressed_tensors_variant(make_random_model("llama"), fp8, reference, strategy)
    config = ModelConfig.from_folder(fp8)
    assert (config.weight_quantization, config.weight_scale_suffix) == ("fp8", "_scale")
    assert_same_outputs(fp8, reference)


def test_compressed_tensors_configs_read_as_releases_write_them() -> None:
    """Groups without weights (a KV-cache or activation scheme) change nothing; a config
    with none at all is plain weights with scales to leave aside; older exports' key
    and a vision-language model's text config are read too."""
    config = compressed_tensors_fp8_config("channel", dynamic=True)
    config["config_groups"]["group_1"] = {"targets": ["Attention"], "weights": None}
    expected = WeightQuantization("fp8", None, "_scale")
    assert weight_quantization({"quantization_config": config}) == expected
    assert weight_quantization({"compression_config": config}) == expected
    assert weight_quantization({"text_config": {"quantization_config": config}}) == expected
    kv_only = {"quant_method": "compressed-tensors", "config_groups": {}, "kv_cache_scheme": {}}
    assert weight_quantization({"quantization_config": kv_only}) == expected


@pytest.mark.parametrize(
    "change,refusal",
    [
        ({"sparsity_config": {"format": "sparse-24-bitmask"}}, "sparsity format"),
        ({"transform_config": {"config_groups": {"u": {}}}}, "transforms"),
        ({"weights": {"symmetric": False}}, "asymmetric"),
        ({"config_groups": {"group_0": ["Linear"]}}, "is a preset"),
    ],
)
def test_compressed_tensors_schemes_the_engine_cannot_serve_are_refused_by_name(
    change: dict[str, object], refusal: str
) -> None:
    config = compressed_tensors_fp8_config("channel", dynamic=True)
    weights = change.pop("weights", None)
    if weights:
        config["config_groups"]["group_0"]["weights"].update(weights)
    config.update(change)
    with pytest.raises(ValueError, match=refusal):
        weight_quantization({"quantization_config": config})


def test_an_autofp8_checkpoint_with_weight_scale_names_loads(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """quant_method "fp8" with a scale per matrix, named `weight_scale` as AutoFP8 and
    vLLM export it (beside input and KV-cache scales), not `weight_scale_inv`."""
    fp8, reference = tmp_path / "fp8", tmp_path / "reference"
    autofp8 = {"quant_method": "fp8", "activation_scheme": "static"}
    write_compressed_tensors_variant(
        make_random_model("llama"), fp8, reference, "tensor", config=autofp8
    )
    assert ModelConfig.from_folder(fp8).weight_scale_suffix == "_scale_inv|_scale"
    assert_same_outputs(fp8, reference)


def test_scales_per_output_channel_may_be_one_dimensional() -> None:
    weight = torch.randn(5, 8).to(torch.float8_e4m3fn)
    scale = torch.rand(5)
    expected = (weight.float() * scale[:, None]).to(torch.bfloat16)
    assert torch.equal(dequantize(weight, scale, torch.bfloat16), expected)
    assert torch.equal(dequantize(weight, scale[:, None], torch.bfloat16), expected)
    # Tiles' scales without weight_block_size are refused, however many they are.
    with pytest.raises(ValueError, match="weight_block_size"):
        dequantize(torch.randn(4, 8).to(torch.float8_e4m3fn), torch.ones(2, 2), torch.bfloat16)
