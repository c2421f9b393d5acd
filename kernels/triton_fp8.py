"""FP8 inside Triton kernels: e4m3 and e5m2 codes to fp32 and back, from the bits.

Codes travel as integers (uint8 in memory), never as Triton's fp8 types, which
sm_80 cannot convert: so one kernel serves every GPU and the interpreter.
Decoding is exact for every finite code, and with `SPECIALS` gives NaN and inf
for their codes (a KV cache's: a NaN key stays NaN, as in torch; weights'
decoders leave that check out, no checkpoint holding them). Encoding rounds
to nearest even, saturates at the format's largest finite value and keeps
NaN, as torch's conversion of a clamped value does (kernels/kv_cache_dtype.py's
`quantize_kv`, the reference). `FORMAT` is kernels/kv_cache_dtype.py's code:
1 e4m3fn, 2 e5m2.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def fp8_to_float(code, FORMAT: tl.constexpr, SPECIALS: tl.constexpr = False):
    """FP8 codes (int32, 0..255) -> their fp32 values (NaN and inf codes too with
    `SPECIALS`)."""
    MBITS: tl.constexpr = 3 if FORMAT == 1 else 2
    BIAS: tl.constexpr = 7 if FORMAT == 1 else 15
    exponent = (code >> MBITS) & ((1 << (7 - MBITS)) - 1)
    mantissa = code & ((1 << MBITS) - 1)
    normal = (((exponent + (127 - BIAS)) << 23) | (mantissa << (23 - MBITS))).to(
        tl.float32, bitcast=True
    )
    # Subnormals: m * 2^(1 - bias - mantissa bits).
    subnormal = mantissa.to(tl.float32) * (2.0 ** (1 - BIAS - MBITS))
    magnitude = tl.where(exponent == 0, subnormal, normal)
    if SPECIALS:
        if FORMAT == 1:  # e4m3fn: no infinities, NaN where every other bit is set
            magnitude = tl.where((code & 0x7F) == 0x7F, float("nan"), magnitude)
        else:  # e5m2: IEEE-like, the top exponent is inf (mantissa 0) or NaN
            special = tl.where(mantissa == 0, float("inf"), float("nan"))
            magnitude = tl.where(exponent == 31, special, magnitude)
    return tl.where(code >= 128, -magnitude, magnitude)


@triton.jit
def e4m3_to_float(code):
    """e4m3fn codes (int32, 0..255) -> fp32: FP8 weights' format (kernels/fp8.py)."""
    return fp8_to_float(code, 1)


@triton.jit
def float_to_fp8(x, FORMAT: tl.constexpr):
    """fp32 values -> FP8 codes (int32, 0..255): saturated, rounded to nearest even."""
    MBITS: tl.constexpr = 3 if FORMAT == 1 else 2
    BIAS: tl.constexpr = 7 if FORMAT == 1 else 15
    LIMIT: tl.constexpr = 448.0 if FORMAT == 1 else 57344.0
    negative = x.to(tl.int32, bitcast=True) < 0  # the sign bit: -0.0 too, as torch
    magnitude = tl.minimum(tl.abs(x), LIMIT)
    bits = magnitude.to(tl.int32, bitcast=True)
    # Normal: drop the low mantissa bits, rounding half to even; a carry out of the
    # mantissa bumps the exponent, which is the next code up.
    SHIFT: tl.constexpr = 23 - MBITS
    kept = (bits & 0x7FFFFF) >> SHIFT
    dropped = bits & ((1 << SHIFT) - 1)
    half = 1 << (SHIFT - 1)
    up = (dropped > half) | ((dropped == half) & ((kept & 1) == 1))
    normal = ((((bits >> 23) - 127 + BIAS) << MBITS) + kept + up.to(tl.int32)).to(tl.int32)
    # Subnormal (below 2^(1 - bias)): a multiple of 2^(1 - bias - mantissa bits), the
    # scaled value's integer part rounded half to even (exact in fp32).
    # (Clamped first: a normal value's steps would overflow int32 for e5m2.)
    steps = tl.minimum(magnitude, 2.0 ** (1 - BIAS)) * (2.0 ** (BIAS - 1 + MBITS))
    whole = steps.to(tl.int32)
    fraction = steps - whole.to(tl.float32)
    round_up = (fraction > 0.5) | ((fraction == 0.5) & ((whole & 1) == 1))
    subnormal = whole + round_up.to(tl.int32)
    code = tl.where(magnitude < 2.0 ** (1 - BIAS), subnormal, normal)
    code = tl.where(x != x, 0x7F, code)  # NaN, as torch encodes it (sign kept below)
    return tl.where(negative, code | 128, code)
