"""MXFP4 decoding inside Triton kernels: packed bytes and e8m0 scales to fp32 tiles.

A kernel that reads MXFP4 weights (kernels/triton_experts.py) loads a tile of
packed bytes and, beside each byte, its block's scale, and gets back the two
fp32 tiles the low and high nibbles hold: the values at even and at odd
positions along K. Exact, as kernels/mxfp4.py's `dequantize` (the reference):
an e2m1 value times a power of two, built from its bits. No lookup table, so
nothing but the weights is read from memory.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def e2m1_to_float(code):
    """4-bit codes (int32, 0..15) -> their fp32 values: +-{0, 0.5, 1, 1.5, 2, 3, 4, 6}."""
    exponent = (code >> 1) & 3
    mantissa = code & 1
    # Twice the magnitude, an integer: m for exponent 0, else (2 + m) << (exponent - 1).
    twice = tl.where(exponent == 0, mantissa, (2 + mantissa) << tl.maximum(exponent - 1, 0))
    magnitude = twice.to(tl.float32) * 0.5
    return tl.where(code >= 8, -magnitude, magnitude)


@triton.jit
def e8m0_to_float(scale):
    """e8m0 scales (uint8) -> 2^(s - 127) in fp32, from the exponent bits (s = 0: the
    subnormal 2^-127). 255, NaN in OCP's spec and in no checkpoint, comes out as inf, so
    its zero codes give NaN where the reference's ldexp gives 0."""
    s = scale.to(tl.int32)
    bits = tl.where(s == 0, 0x400000, s << 23)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def mxfp4_pair(packed, scale):
    """A tile of packed bytes and the scale of each byte's block -> (even, odd): the
    fp32 values of the low and the high nibbles."""
    code = packed.to(tl.int32)
    factor = e8m0_to_float(scale)
    return e2m1_to_float(code & 0x0F) * factor, e2m1_to_float(code >> 4) * factor
