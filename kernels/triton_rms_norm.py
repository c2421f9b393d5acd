"""Triton RMSNorm with the residual add fused in; same contract as `kernels.rms_norm`.

One program per token row: the residual add, the fp32 statistics and the
weight multiply happen in one pass over the row instead of four torch ops.
Rounding mirrors the torch path step for step (the sum is rounded to the
residual's dtype before the statistics; the normalised row is rounded before
the weight multiply), so low-precision results agree to the last bit or so.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def rms_norm_kernel(
    x_ptr,
    residual_ptr,
    weight_ptr,
    out_ptr,
    stride_x,
    stride_r,
    stride_o,
    hidden,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    ROUND_FIRST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + row * stride_r + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
        tl.store(residual_ptr + row * stride_r + cols, x, mask=mask)
    h = x.to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(h * h, 0) / hidden + eps)
    normed = h * inv_rms
    if ROUND_FIRST:  # weights in the stream's dtype: round, then weigh (Llama's order)
        normed = normed.to(x.dtype).to(tl.float32)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (w * normed).to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (normed, residual) where residual = x + residual (in place) or x."""
    hidden = x.shape[-1]
    rows = x.reshape(-1, hidden)
    out = torch.empty_like(rows)
    res_rows = rows if residual is None else residual.view(-1, hidden)
    assert rows.stride(-1) == res_rows.stride(-1) == 1
    block = triton.next_power_of_2(hidden)
    if rows.shape[0]:
        rms_norm_kernel[(rows.shape[0],)](
            rows,
            res_rows,
            weight,
            out,
            rows.stride(0),
            res_rows.stride(0),
            out.stride(0),
            hidden,
            eps,
            HAS_RESIDUAL=residual is not None,
            ROUND_FIRST=weight.dtype == rows.dtype,
            BLOCK=block,
            num_warps=min(max(block // 256, 1), 8),
        )
    return out.view(x.shape), x if residual is None else residual
