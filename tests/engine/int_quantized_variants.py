"""Packed-integer copies of a random model (GPTQ, AWQ, compressed-tensors), each beside
a plain checkpoint of the weights its codes encode.

The GPTQ and AWQ packers are written from the exporters' loops (AutoGPTQ's
`QuantLinear.pack`, AutoAWQ's `WQLinear_GEMM.from_linear`), word by word, not
with the engine's vectorised unpacking; the compressed-tensors copies are made
by the compressed-tensors library itself, as llm-compressor saves them.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .quantized_variants import write_variants

GROUP_SIZE = 32  # the random models' 64- and 128-wide rows hold two or four groups
# AutoAWQ's `order_map`: a word's nibble i holds column 8c + AWQ_ORDER[i].
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def is_projection(name: str) -> bool:
    """The layers GPTQ and AWQ quantize: every projection but the LM head, experts'
    too (Mixtral's named w1/w2/w3)."""
    mixtral_expert = re.search(r"\.experts\.\d+\.w[123]\.weight$", name)
    return (name.endswith("proj.weight") and "lm_head" not in name) or mixtral_expert is not None


# Matrices that read one input (q, k, v; gate and up; an expert's gate and up) and so
# one Hessian, whose act-order GPTQ gives them all: the name of the one they share.
_SHARED_INPUT = re.compile(r"\b(?:k_proj|v_proj|up_proj|w3)\.weight$")
_FIRST_OF = {"k_proj": "q_proj", "v_proj": "q_proj", "up_proj": "gate_proj", "w3": "w1"}


def _input_of(name: str) -> str:
    """The name of the first matrix reading `name`'s input."""
    found = _SHARED_INPUT.search(name)
    if found is None:
        return name
    part = found.group(0).removesuffix(".weight")
    return name[: found.start()] + _FIRST_OF[part] + ".weight"


def quantize_groups(
    weight: torch.Tensor, bits: int, symmetric: bool, groups: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """weight [out, in] as unsigned codes [out, in], per-group scales and zeros
    [out, G] (`groups`: each input column's group) and the weights they encode
    ((code - zero) * scale, fp32)."""
    top = (1 << bits) - 1
    count = int(groups.max()) + 1
    scales = torch.empty(weight.shape[0], count)
    zeros = torch.empty(weight.shape[0], count)
    for group in range(count):
        part = weight[:, groups == group].float()
        if symmetric:
            scales[:, group] = part.abs().amax(1).clamp(min=1e-6) / (top // 2)
            zeros[:, group] = (top + 1) // 2
        else:
            low, high = part.amin(1).clamp(max=0), part.amax(1).clamp(min=0)
            scales[:, group] = ((high - low) / top).clamp(min=1e-6)
            zeros[:, group] = (-low / scales[:, group]).round().clamp(0, top)
    codes = (weight.float() / scales[:, groups] + zeros[:, groups]).round().clamp(0, top)
    encoded = (codes - zeros[:, groups]) * scales[:, groups]
    return codes.to(torch.int64), scales, zeros.to(torch.int64), encoded


def pack_down(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """[R, C] unsigned codes -> int32 [R * bits / 32, C]: row r*n + j of a column in bits
    j*bits.. of word r (AutoGPTQ's qweight)."""
    per_word = 32 // bits
    words = torch.zeros(codes.shape[0] // per_word, codes.shape[1], dtype=torch.int64)
    for row in range(words.shape[0]):
        for j in range(per_word):
            words[row] |= codes[row * per_word + j] << (bits * j)
    return _as_int32(words)


def pack_across(
    codes: torch.Tensor, bits: int, order: tuple[int, ...] | None = None
) -> torch.Tensor:
    """[R, C] unsigned codes -> int32 [R, C * bits / 32]: column c*n + order[j] in bits
    j*bits.. of word c (AutoGPTQ's qzeros in order; AutoAWQ's qweight and qzeros in
    AWQ_ORDER)."""
    per_word = 32 // bits
    order = order or tuple(range(per_word))
    words = torch.zeros(codes.shape[0], codes.shape[1] // per_word, dtype=torch.int64)
    for column in range(words.shape[1]):
        for j in range(per_word):
            words[:, column] |= codes[:, column * per_word + order[j]] << (bits * j)
    return _as_int32(words)


def _as_int32(words: torch.Tensor) -> torch.Tensor:
    """Unsigned 32-bit words held in int64 -> the int32 bit patterns checkpoints store."""
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)


def write_gptq_variant(
    source: Path,
    gptq: Path,
    reference: Path,
    bits: int,
    checkpoint_format: str = "gptq",
    act_order: bool = False,
    order_by_input: bool = False,
    quantized: Callable[[str], bool] = is_projection,
) -> None:
    """`source`'s projections as AutoGPTQ writes them: symmetric codes (zero 2^(bits-1),
    stored less one in the original "gptq" format) or, for "gptq_v2", asymmetric ones
    with their zeros as they are; act-order shuffles which columns share a group
    (`g_idx`: each matrix its own order, or with `order_by_input` one order for the
    matrices reading one input, as GPTQ's shared Hessian gives them); every quantized
    layer without a bias carries an all-zero one, as older AutoGPTQ exports write
    them. `quantized`: which matrices (every projection but the LM head)."""
    gen = torch.Generator().manual_seed(11)
    stored: dict[str, torch.Tensor] = {}
    plain: dict[str, torch.Tensor] = {}
    orders: dict[str, torch.Tensor] = {}
    tensors = load_file(source / "model.safetensors")
    for name, tensor in tensors.items():
        if not quantized(name):
            stored[name] = plain[name] = tensor
            continue
        layer = name.removesuffix(".weight")
        in_features = tensor.shape[1]
        position = None
        if act_order:
            key = _input_of(name) if order_by_input else name
            position = orders.setdefault(key, torch.randperm(in_features, generator=gen))
        groups = (torch.arange(in_features) if position is None else position) // GROUP_SIZE
        symmetric = checkpoint_format == "gptq"
        codes, scales, zeros, _ = quantize_groups(tensor, bits, symmetric, groups)
        stored_zeros = zeros - 1 if checkpoint_format == "gptq" else zeros
        stored[layer + ".qweight"] = pack_down(codes.t(), bits)
        stored[layer + ".qzeros"] = pack_across(stored_zeros.t().contiguous(), bits)
        stored[layer + ".scales"] = scales.t().contiguous().to(torch.float16)
        stored[layer + ".g_idx"] = groups.to(torch.int32)
        if layer + ".bias" not in tensors:
            stored[layer + ".bias"] = torch.zeros(tensor.shape[0], dtype=torch.float16)
        plain[name] = _dequantized(codes, stored[layer + ".scales"].t(), zeros, groups)
    quantization = {
        "quant_method": "gptq",
        "bits": bits,
        "group_size": GROUP_SIZE,
        "desc_act": act_order,
        "sym": checkpoint_format == "gptq",
        "checkpoint_format": checkpoint_format,
    }
    write_variants(source, {gptq: (stored, quantization), reference: (plain, None)})


def write_awq_variant(
    source: Path,
    awq: Path,
    reference: Path,
    quantized: Callable[[str], bool] = is_projection,
) -> None:
    """`source`'s projections (those `quantized` names) as AutoAWQ's GEMM layout stores
    them: asymmetric 4-bit codes and zeros packed across the outputs in AWQ_ORDER, fp16
    scales per group."""
    stored: dict[str, torch.Tensor] = {}
    plain: dict[str, torch.Tensor] = {}
    for name, tensor in load_file(source / "model.safetensors").items():
        if not quantized(name):
            stored[name] = plain[name] = tensor
            continue
        layer = name.removesuffix(".weight")
        groups = torch.arange(tensor.shape[1]) // GROUP_SIZE
        codes, scales, zeros, _ = quantize_groups(tensor, 4, False, groups)
        stored[layer + ".qweight"] = pack_across(codes.t().contiguous(), 4, AWQ_ORDER)
        stored[layer + ".qzeros"] = pack_across(zeros.t().contiguous(), 4, AWQ_ORDER)
        stored[layer + ".scales"] = scales.t().contiguous().to(torch.float16)
        plain[name] = _dequantized(codes, stored[layer + ".scales"].t(), zeros, groups)
    quantization = {
        "quant_method": "awq",
        "bits": 4,
        "group_size": GROUP_SIZE,
        "zero_point": True,
        "version": "gemm",
        "modules_to_not_convert": None,
    }
    write_variants(source, {awq: (stored, quantization), reference: (plain, None)})


def _dequantized(
    codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, groups: torch.Tensor
) -> torch.Tensor:
    """What the stored codes encode with the stored (fp16) scales, in fp32."""
    return (codes - zeros[:, groups]).float() * scales.float()[:, groups]


def write_compressed_tensors_int_variant(
    source: Path,
    quantized: Path,
    reference: Path,
    bits: int,
    strategy: str,
    symmetric: bool = True,
    fmt: str = "pack-quantized",
) -> dict[str, Any]:
    """`source`'s projections quantized and saved by the compressed-tensors library as
    llm-compressor saves them (min-max scales; `strategy` "group" of GROUP_SIZE,
    "channel" or "tensor"; `fmt` "pack-quantized" or "int-quantized"), and the weights
    they encode (the library's own fake quantization) in `reference`; returns the
    quantization_config it wrote."""
    import transformers
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        apply_quantization_config,
    )
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    args = QuantizationArgs(
        num_bits=bits,
        type="int",
        symmetric=symmetric,
        strategy=strategy,
        group_size=GROUP_SIZE if strategy == "group" else None,
    )
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    apply_quantization_config(
        model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"])
    )
    plain = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    for name, module in model.named_modules():
        if not hasattr(module, "weight_scale"):
            continue
        weight = module.weight.data
        rows = weight.reshape(weight.shape[0], -1, GROUP_SIZE) if strategy == "group" else weight
        if strategy == "tensor":
            low, high = weight.amin().reshape(1), weight.amax().reshape(1)
        else:
            low, high = rows.amin(-1), rows.amax(-1)
        scale, zero = calculate_qparams(low, high, args)
        module.weight_scale.data.copy_(scale.reshape(module.weight_scale.shape))
        zero_point = getattr(module, "weight_zero_point", None)
        if zero_point is not None:
            zero_point.data.copy_(zero.reshape(zero_point.shape))
        encoded = fake_quantize(weight, module.weight_scale, zero_point, args)
        plain[name + ".weight"] = encoded.clone()
    plain = {n: t for n, t in plain.items() if not n.endswith(("_scale", "_zero_point"))}
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format=fmt)
    compressor.compress_model(model)
    with tempfile.TemporaryDirectory() as saved:
        model.save_pretrained(saved)
        compressor.update_config(saved)
        config = json.loads((Path(saved) / "config.json").read_text())["quantization_config"]
        stored = load_file(Path(saved) / "model.safetensors")
    write_variants(source, {quantized: (stored, config), reference: (plain, None)})
    return config
