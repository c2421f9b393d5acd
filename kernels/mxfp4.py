"""MXFP4 weights (OCP microscaling): 4-bit e2m1 values, 32 to a power-of-two scale.

How OpenAI released gpt-oss's experts, and how the Triton experts keep them
in memory: 4.25 bits a weight instead of bf16's 16, which is what lets
gpt-oss-120b (~240 GB in bf16) fit one 141 GB GPU, and what a decode step,
bound by reading expert weights, gains speed from. A stack of matrices
[E, N, K] is `blocks` [E, N, K / 2] (uint8, two values a byte, the low nibble
first along K) beside `scales` [E, N, K / 32] (uint8 e8m0: 2^(s - 127) for
the block's 32 values). `dequantize` is the reference every MXFP4 path is
tested against: exact in bf16 and fp32 (an e2m1 value has two significant
bits, and the scale only moves the exponent).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
VALUES_PER_SCALE = 32
# Bytes (16 to a scale) dequantized at once: ~16 MB of fp32 temporaries.
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Mxfp4Weight:
    """A stack of matrices [E, N, K] in MXFP4 (see the module docstring)."""

    blocks: torch.Tensor  # [E, N, K / 2] uint8
    scales: torch.Tensor  # [E, N, K / 32] uint8

    def __post_init__(self) -> None:
        check_packed(self.blocks, self.scales)

    @property
    def shape(self) -> torch.Size:
        """The matrices' shape, as the dequantized stack's."""
        return torch.Size((*self.blocks.shape[:-1], 2 * self.blocks.shape[-1]))

    def expert(self, index: int, dtype: torch.dtype) -> torch.Tensor:
        """One matrix, dequantized: [N, K] in `dtype`."""
        return dequantize(self.blocks[index], self.scales[index], dtype)


def check_packed(blocks: torch.Tensor, scales: torch.Tensor) -> None:
    if (
        blocks.dtype != torch.uint8
        or scales.dtype != torch.uint8
        or blocks.shape[:-1] != scales.shape[:-1]
        or blocks.shape[-1] != scales.shape[-1] * (VALUES_PER_SCALE // 2)
    ):
        raise ValueError(
            f"MXFP4 blocks {tuple(blocks.shape)} ({blocks.dtype}) do not match their scales "
            f"{tuple(scales.shape)} ({scales.dtype}): expected uint8, 16 bytes of blocks a scale"
        )


def dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """blocks [..., K / 2] and scales [..., K / 32] (uint8) -> [..., K] in `dtype`.
    Rows are done a chunk at a time, so the temporaries stay small beside the output
    (a 120B model's stacked experts are tens of GB)."""
    check_packed(blocks, scales)
    table = torch.tensor(FP4_VALUES, dtype=torch.float32, device=blocks.device)
    bytes_per_scale = VALUES_PER_SCALE // 2
    flat_blocks = blocks.reshape(-1, bytes_per_scale)
    flat_scales = scales.reshape(-1, 1).to(torch.int32) - SCALE_BIAS
    out = torch.empty(flat_blocks.shape[0], VALUES_PER_SCALE, dtype=dtype, device=blocks.device)
    step = max(1, CHUNK_BYTES // bytes_per_scale)
    for start in range(0, flat_blocks.shape[0], step):
        part = slice(start, start + step)
        packed = flat_blocks[part].to(torch.int32)
        values = torch.stack((table[packed & 0x0F], table[packed >> 4]), dim=-1).flatten(-2)
        out[part] = torch.ldexp(values, flat_scales[part])
    return out.view(*blocks.shape[:-1], 2 * blocks.shape[-1])
