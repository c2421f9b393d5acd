"""Checkpoints whose weights are stored in FP8 (e4m3), with their scales beside them.

The format DeepSeek-V3 and Qwen3's `-FP8` releases use (`quant_method:
"fp8"`, as transformers' FineGrainedFP8 reads it): each quantized matrix is
float8_e4m3fn beside a `weight_scale_inv` (one fp32 scale per
`weight_block_size` tile, or one for the whole matrix), such that weight =
fp8 value * scale; and compressed-tensors' FP8 (llm-compressor's releases),
the same with the scale named `weight_scale` and one per output channel
([out, 1]), per tile or per matrix. The engine dequantizes each matrix once
as it loads, into the model's dtype, and the model serves those releases with
the numbers they were published with, at bf16's memory; except where the
backend multiplies FP8 itself (Triton), whose projections keep the
checkpoint's bytes and scales (engine/fp8_linears.py), the scales then handed
on under `weight_scale_inv` whatever the checkpoint called them. Which format
a checkpoint uses is read in engine/weight_quantization.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from engine.kv_cache_scales import kv_scale_target
from kernels import fp8

# The name a kept weight's scales go by in the model, whichever format they came in.
SCALE_SUFFIX = "_scale_inv"
# Static activation scales (activation_scheme "static"), which the engine leaves aside
# (it computes in the model's dtype), and FP8 KV-cache scales, which pass on to the
# model (engine/kv_cache_scales.py).
IGNORED_SUFFIXES = (
    ".input_scale",
    ".activation_scale",
    ".act_scale",
    ".output_scale",
    ".k_scale",
    ".v_scale",
    ".kv_scale",
)


def scale_suffix(configured: str, names: Iterable[str]) -> str:
    """The scale suffix a checkpoint uses: `configured`, or where that lists choices
    (`"_scale_inv|_scale"`) the first that some weight's scale in `names` ends with."""
    choices = configured.split("|")
    if len(choices) == 1:
        return configured
    present = set(names)
    for choice in choices:
        if any(name.endswith(".weight" + choice) for name in present):
            return choice
    return choices[0]


def is_scale(name: str, suffix: str = SCALE_SUFFIX) -> bool:
    """A weight's scale in a checkpoint whose scales are named `<weight><suffix>`."""
    return name.endswith(suffix) and not name.endswith(IGNORED_SUFFIXES)


def dequantize(
    weight: torch.Tensor,
    scale: torch.Tensor,
    dtype: torch.dtype,
    block: tuple[int, int] | None = None,
) -> torch.Tensor:
    """fp8 [out, in] times its scales (one per `block` tile, the last tiles cut short, as
    transformers reads them; one per output channel, [out, 1]; or one scalar), in fp32,
    rounded once to `dtype`; a stack of experts' matrices [E, ...] with a grid per expert."""
    values = weight.to(torch.float32)
    if scale.numel() == 1:
        return (values * scale.to(torch.float32).reshape(())).to(dtype)
    if block is None and weight.dim() == 2 and _per_channel(scale, weight.shape[0]):
        # One per output channel, [out, 1] as compressed-tensors writes it, or [out].
        return (values * scale.to(torch.float32).reshape(-1, 1)).to(dtype)
    if block is not None and weight.dim() == 3 and scale.dim() == 3 and len(weight) == len(scale):
        # A stack of experts' matrices (Qwen3-VL MoE's fused `experts.gate_up_proj`), its
        # scales one block grid per expert: each expert as a matrix of its own.
        tiles = fp8.Fp8Block(*block)
        pairs = zip(weight, scale, strict=True)
        return torch.stack([fp8.dequantize(w, s, tiles, dtype) for w, s in pairs])
    if block is None or scale.dim() != 2 or weight.dim() != 2:
        raise ValueError(
            f"scales {tuple(scale.shape)} for a {tuple(weight.shape)} weight need a 2-d "
            "weight and weight_block_size (or one scale per output channel)"
        )
    return fp8.dequantize(weight, scale, fp8.Fp8Block(*block), dtype)


def dequantized_weights(
    tensors: Iterable[tuple[str, torch.Tensor]],
    scales: dict[str, torch.Tensor],
    dtype: torch.dtype,
    block: tuple[int, int] | None,
    keep: frozenset[str] = frozenset(),
    suffix: str = SCALE_SUFFIX,
) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint's tensors with each FP8 matrix dequantized by its scale (`scales`:
    every `<weight><suffix>` of the checkpoint, by name) and the scales themselves left
    out; but the matrices named in `keep` (engine/fp8_linears.py) go through as their
    e4m3 bits (uint8), each followed by its scales as `<weight>_scale_inv`."""
    for name, tensor in tensors:
        if kv_scale_target(name) is None and (
            is_scale(name, suffix) or name.endswith(IGNORED_SUFFIXES)
        ):
            continue
        if tensor.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            scale = scales.get(name + suffix)
            if scale is None:
                raise ValueError(f"FP8 weight {name!r} has no {name + suffix!r}")
            if name in keep:
                yield name, tensor.view(torch.uint8)
                if block is None and _per_channel(scale, tensor.shape[0]):
                    scale = scale.reshape(-1, 1)  # a scale per row, as the model holds it
                yield name + SCALE_SUFFIX, scale.to(torch.float32)
                continue
            tensor = dequantize(tensor, scale, dtype, block)
        yield name, tensor


def _per_channel(scale: torch.Tensor, out_features: int) -> bool:
    """A scale per output channel: [out] or [out, 1] (not a grid of tiles' scales)."""
    return scale.numel() == out_features and (scale.dim() == 1 or scale.shape[-1] == 1)
