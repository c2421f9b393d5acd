"""Checkpoints whose weights are stored in FP8 (`quantization_config.quant_method: "fp8"`).

The format DeepSeek-V3 and Qwen3's `-FP8` releases use, as transformers'
FineGrainedFP8 reads it: each quantized matrix is float8_e4m3fn beside a
`weight_scale_inv` (one fp32 scale per `weight_block_size` tile, or one for
the whole matrix), such that weight = fp8 value * scale. The engine
dequantizes each matrix once as it loads, into the model's dtype, and the
model serves those releases with the numbers they were published with, at
bf16's memory; except where the backend multiplies FP8 itself (Triton), whose
projections keep the checkpoint's bytes and scales (engine/fp8_linears.py).
Which method a checkpoint uses is read in engine/weight_quantization.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from kernels import fp8

SCALE_SUFFIX = "_scale_inv"
# Static activation scales (activation_scheme "static"): the engine computes in the
# model's dtype, so they have nothing to scale.
IGNORED_SUFFIXES = (".input_scale", ".activation_scale")


def is_scale(name: str) -> bool:
    return name.endswith(SCALE_SUFFIX)


def dequantize(
    weight: torch.Tensor,
    scale: torch.Tensor,
    dtype: torch.dtype,
    block: tuple[int, int] | None = None,
) -> torch.Tensor:
    """fp8 [out, in] times its scales (one per `block` tile, the last tiles cut short, as
    transformers reads them; or one scalar), in fp32, rounded once to `dtype`."""
    if scale.numel() == 1:
        return (weight.to(torch.float32) * scale.to(torch.float32)).to(dtype)
    if block is None or scale.dim() != 2 or weight.dim() != 2:
        raise ValueError(
            f"scales {tuple(scale.shape)} for a {tuple(weight.shape)} weight need a 2-d "
            "weight and weight_block_size"
        )
    return fp8.dequantize(weight, scale, fp8.Fp8Block(*block), dtype)


def dequantized_weights(
    tensors: Iterable[tuple[str, torch.Tensor]],
    scales: dict[str, torch.Tensor],
    dtype: torch.dtype,
    block: tuple[int, int] | None,
    keep: frozenset[str] = frozenset(),
) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint's tensors with each FP8 matrix dequantized by its scale (`scales`:
    every `*_scale_inv` of the checkpoint, by name) and the scales themselves left out;
    but the matrices named in `keep` (engine/fp8_linears.py) go through as their e4m3
    bits (uint8), each followed by its scales."""
    for name, tensor in tensors:
        if is_scale(name) or name.endswith(IGNORED_SUFFIXES):
            continue
        if tensor.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            scale = scales.get(name + SCALE_SUFFIX)
            if scale is None:
                raise ValueError(f"FP8 weight {name!r} has no {name + SCALE_SUFFIX!r}")
            if name in keep:
                yield name, tensor.view(torch.uint8)
                yield name + SCALE_SUFFIX, scale.to(torch.float32)
                continue
            tensor = dequantize(tensor, scale, dtype, block)
        yield name, tensor
