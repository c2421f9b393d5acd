"""Attention scores inside the Triton kernels: the softmax scale, and Gemma 2's
logit soft-capping (cap * tanh(s / cap)), in the log2 domain the kernels exponentiate in.

The host folds the constants into two numbers once per launch (`score_scales`):
without a cap the kernel multiplies by one factor, as before; with one it
multiplies, squashes and multiplies again. `SOFTCAP` is a compile-time switch,
so models without a cap run the same code they always did.
"""

from __future__ import annotations

import math

import triton
import triton.language as tl

# A constexpr, so that kernels may read it (a compiled kernel reads no other global).
LOG2E = tl.constexpr(math.log2(math.e))


def score_scales(scale: float, softcap: float | None) -> tuple[float, float]:
    """(pre, post): scores are dot * pre, or post * tanh(dot * pre) under a cap; both
    already in log2 units (exp2 of them is exp of the natural-log score)."""
    if softcap is None:
        return scale * LOG2E.value, 0.0
    if softcap <= 0:
        raise ValueError(f"attention soft-cap must be positive, got {softcap}")
    return scale / softcap, softcap * LOG2E.value


@triton.jit
def scaled_scores(dots, pre, post, SOFTCAP: tl.constexpr):
    """Raw q·k dots -> log2-domain scores. tanh(x) is taken as sign(x) (1 - e) / (1 + e)
    with e = exp(-2|x|): not every Triton version has tanh, and e never overflows."""
    s = dots * pre
    if SOFTCAP:
        e = tl.exp(-2.0 * tl.abs(s))
        t = (1.0 - e) / (1.0 + e)
        s = post * tl.where(s < 0, -t, t)
    return s
