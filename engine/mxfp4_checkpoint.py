"""Checkpoints whose expert weights are stored in MXFP4 (`quant_method: "mxfp4"`).

How OpenAI released gpt-oss: each expert matrix is `<name>_blocks` [..., rows,
G, 16] (uint8, two 4-bit e2m1 values a byte, the low nibble first) beside
`<name>_scales` [..., rows, G] (uint8 e8m0: a power of two, 2^(s - 127), per
block of 32 values). The engine dequantizes each matrix once as it loads,
into the model's dtype, as transformers does without a GPU kernel, and hands
the model the plain checkpoint's tensor (`<name>`, transposed to [..., in,
out] as gpt-oss's unquantized files store it): so the model serves the
release's numbers at bf16's memory (it has no FP4 matmuls).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

BLOCKS_SUFFIX = "_blocks"
SCALES_SUFFIX = "_scales"
# e2m1's 16 codes: sign bit, two exponent bits, one mantissa bit.
FP4_VALUES = (
    0.0,
    0.5,
    1.0,
    1.5,
    2.0,
    3.0,
    4.0,
    6.0,
    -0.0,
    -0.5,
    -1.0,
    -1.5,
    -2.0,
    -3.0,
    -4.0,
    -6.0,
)
SCALE_BIAS = 127
# Blocks of 32 values dequantized at once: ~8 MB of fp32 temporaries.
CHUNK_BLOCKS = 1 << 16


def is_scale(name: str) -> bool:
    return name.endswith(SCALES_SUFFIX)


def dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """blocks [..., rows, G, 16] uint8 and scales [..., rows, G] -> [..., rows, G * 32]
    in `dtype`: each value times its block's power of two (exact in bf16 and fp32).
    Rows are done a chunk at a time, so the temporaries stay small beside the output
    (a 120B model's stacked experts are tens of GB)."""
    if blocks.dtype != torch.uint8 or blocks.shape[:-1] != scales.shape:
        raise ValueError(
            f"MXFP4 blocks {tuple(blocks.shape)} ({blocks.dtype}) do not match their scales "
            f"{tuple(scales.shape)}: expected uint8 blocks shaped like the scales plus 16 bytes"
        )
    table = torch.tensor(FP4_VALUES, dtype=torch.float32)
    flat_blocks = blocks.reshape(-1, blocks.shape[-1])
    flat_scales = scales.reshape(-1, 1).to(torch.int32) - SCALE_BIAS
    out = torch.empty(flat_blocks.shape[0], 2 * flat_blocks.shape[1], dtype=dtype)
    for start in range(0, flat_blocks.shape[0], CHUNK_BLOCKS):
        part = slice(start, start + CHUNK_BLOCKS)
        packed = flat_blocks[part].to(torch.int32)
        values = torch.stack((table[packed & 0x0F], table[packed >> 4]), dim=-1).flatten(-2)
        out[part] = torch.ldexp(values, flat_scales[part])
    return out.view(*scales.shape[:-1], -1)


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
