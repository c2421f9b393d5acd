"""Triton SiLU(gate) * up over the fused gate/up projection; same contract as the torch op.

One pass reads gate and up and writes the product, where torch runs SiLU and
the multiply as two passes. SiLU's result is rounded to the input dtype
before the multiply, as the torch path does.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl


@triton.jit
def silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, size, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < size
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * stride_x + size + cols, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    silu = (g / (1.0 + tl.exp(-g))).to(gate.dtype).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (silu * up.to(tl.float32)).to(gate.dtype), mask=mask)


def launch_act_and_mul(kernel: Any, gate_up: torch.Tensor, *scalars: float) -> torch.Tensor:
    """gate_up [T, 2 * I] -> [T, I] through an activation-and-mul `kernel` with this
    file's signature (one program per row and column tile), its own `scalars` (an
    activation's parameters) after `size`."""
    rows = gate_up.reshape(-1, gate_up.shape[-1])
    size = rows.shape[-1] // 2
    out = torch.empty(rows.shape[0], size, dtype=rows.dtype, device=rows.device)
    assert rows.stride(-1) == 1
    block = min(1024, triton.next_power_of_2(size))
    if rows.shape[0]:
        kernel[(rows.shape[0], triton.cdiv(size, block))](
            rows, out, rows.stride(0), out.stride(0), size, *scalars, BLOCK=block
        )
    return out.view(*gate_up.shape[:-1], size)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [T, 2 * I] -> [T, I]."""
    return launch_act_and_mul(silu_and_mul_kernel, gate_up)
