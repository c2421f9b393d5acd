"""Triton clamped SwiGLU (gpt-oss); same contract as kernels/clamped_swiglu_and_mul.py.

One pass reads gate and up and writes (up + 1) * gate * sigmoid(alpha * gate)
after clamping both at `limit`, in fp32; the two factors are rounded to the
input dtype before their product, as the torch path rounds each op's result.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_silu_and_mul import launch_act_and_mul


@triton.jit
def clamped_swiglu_and_mul_kernel(
    x_ptr, out_ptr, stride_x, stride_o, size, alpha, limit, BLOCK: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < size
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * stride_x + size + cols, mask=mask, other=0.0)
    g = tl.minimum(gate.to(tl.float32), limit)
    u = tl.minimum(tl.maximum(up.to(tl.float32), -limit), limit)
    glu = (g / (1.0 + tl.exp(-alpha * g))).to(gate.dtype).to(tl.float32)
    shifted = (u + 1.0).to(gate.dtype).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (shifted * glu).to(gate.dtype), mask=mask)


def clamped_swiglu_and_mul(gate_up: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    """gate_up [T, 2 * I] (gate then up) -> [T, I]."""
    return launch_act_and_mul(clamped_swiglu_and_mul_kernel, gate_up, alpha, limit)
