"""Checkpoints whose expert weights are stored in MXFP4 (`quant_method: "mxfp4"`).

How OpenAI released gpt-oss: each expert matrix is `<name>_blocks` [..., rows,
G, 16] (uint8, two 4-bit e2m1 values a byte, the low nibble first) beside
`<name>_scales` [..., rows, G] (uint8 e8m0: a power of two, 2^(s - 127), per
block of 32 values); kernels/mxfp4.py describes the format. Where the
backend's experts op multiplies MXFP4 itself (Triton: `FusedOps.experts_mxfp4`),
the model keeps the blocks and scales as they are (4.25 bits a weight). Where
it does not (the torch path), the engine dequantizes each matrix once as it
loads, into the model's dtype, as transformers does without a GPU kernel,
and hands the model the plain checkpoint's tensor (`<name>`, transposed to
[..., in, out] as gpt-oss's unquantized files store it): the release's
numbers at bf16's memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from engine.config import ModelConfig
from kernels import mxfp4
from kernels.fused_ops import FusedOps

BLOCKS_SUFFIX = "_blocks"
SCALES_SUFFIX = "_scales"


def keeps_mxfp4(config: ModelConfig, ops: FusedOps) -> bool:
    """Whether the model keeps its checkpoint's MXFP4 weights as they are (the loader
    then passes blocks and scales through, undequantized)."""
    return config.weight_quantization == "mxfp4" and ops.experts_mxfp4


def is_scale(name: str) -> bool:
    return name.endswith(SCALES_SUFFIX)


def dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """blocks [..., rows, G, 16] uint8 and scales [..., rows, G] (the checkpoint's
    layout) -> [..., rows, G * 32] in `dtype` (kernels/mxfp4.py: exact)."""
    if blocks.dim() < 2 or blocks.shape[:-1] != scales.shape:
        raise ValueError(
            f"MXFP4 blocks {tuple(blocks.shape)} ({blocks.dtype}) do not match their scales "
            f"{tuple(scales.shape)}: expected uint8 blocks shaped like the scales plus 16 bytes"
        )
    return mxfp4.dequantize(blocks.flatten(-2), scales, dtype)


def dequantized_weights(
    tensors: Iterable[tuple[str, torch.Tensor]],
    scales: dict[str, torch.Tensor],
    dtype: torch.dtype,
) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint's tensors with each MXFP4 matrix dequantized by its scales
    (`scales`: every `*_scales` of the checkpoint, by name) under the plain name and
    layout ([..., in, out]), and the scales themselves left out."""
    for name, tensor in tensors:
        if is_scale(name):
            continue
        if name.endswith(BLOCKS_SUFFIX):
            base = name.removesuffix(BLOCKS_SUFFIX)
            scale = scales.get(base + SCALES_SUFFIX)
            if scale is None:
                raise ValueError(f"MXFP4 weight {name!r} has no {base + SCALES_SUFFIX!r}")
            yield base, dequantize(tensor, scale, dtype).transpose(-1, -2)
            continue
        yield name, tensor
