"""Triton rotary embedding, in place, in HF's rotate-half layout.

The cos/sin rows come precomputed per token (llama3 or linear scaling is
already in the table), so the kernel only applies them: one program per
token rotates all of its query and key heads in place, where the torch path
(`kernels.rotary`) builds a new tensor from four products and a cat.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def rotary_kernel(
    x_ptr,
    cos_ptr,
    sin_ptr,
    stride_xt,
    stride_xh,
    stride_ct,
    stride_st,
    num_heads,
    half,
    BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, BLOCK_HALF)[None, :]
    d_mask = dims < half
    mask = (heads < num_heads) & d_mask
    cos = tl.load(cos_ptr + token * stride_ct + dims, mask=d_mask, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + token * stride_st + dims, mask=d_mask, other=0.0).to(tl.float32)
    first = x_ptr + token * stride_xt + heads * stride_xh + dims
    x1 = tl.load(first, mask=mask, other=0.0)
    x2 = tl.load(first + half, mask=mask, other=0.0)
    a = x1.to(tl.float32)
    b = x2.to(tl.float32)
    tl.store(first, (a * cos - b * sin).to(x1.dtype), mask=mask)
    tl.store(first + half, (b * cos + a * sin).to(x1.dtype), mask=mask)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, D], rotated in place and returned; cos/sin [T, 1, D/2] (or [T, D/2])."""
    num_tokens, num_heads, head_dim = x.shape
    half = head_dim // 2
    assert x.stride(-1) == 1 and cos.stride(-1) == 1 and sin.stride(-1) == 1
    if num_tokens:
        rotary_kernel[(num_tokens,)](
            x,
            cos,
            sin,
            x.stride(0),
            x.stride(1),
            cos.stride(0),
            sin.stride(0),
            num_heads,
            half,
            BLOCK_H=triton.next_power_of_2(num_heads),
            BLOCK_HALF=triton.next_power_of_2(half),
        )
    return x
