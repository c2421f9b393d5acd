"""Reading one tile of keys and values out of the paged KV cache, inside a Triton kernel.

Shared by the decode and prefill attention kernels: token positions go
through the sequence's block table to (block, slot), masked past `valid`.
An FP8 cache's codes (kernels/kv_cache_dtype.py) come back as code * scale in
the queries' dtype, as the reference `dequantize_kv` rounds them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.kv_cache_dtype import fp8_format_code
from kernels.triton_fp8 import fp8_to_float


def kernel_caches(
    key_cache: torch.Tensor, value_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The caches as a kernel takes them, and their FP8 format (0: none): FP8 codes as
    bytes, since Triton's own fp8 types do not convert on sm_80."""
    fp8 = fp8_format_code(key_cache.dtype)
    if fp8:
        return key_cache.view(torch.uint8), value_cache.view(torch.uint8), fp8
    return key_cache, value_cache, fp8


@triton.jit
def load_kv_tile(
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    seq,
    pos,
    valid,
    kv_head,
    d,
    d_mask,
    stride_bt,
    stride_cb,
    stride_cs,
    stride_ch,
    k_scale,
    v_scale,
    CACHE_BLOCK: tl.constexpr,
    FP8: tl.constexpr,
    OUT_TYPE: tl.constexpr,
):
    """K and V ([BLOCK_N, BLOCK_D]) for the token positions `pos` of sequence `seq`;
    from an FP8 cache (`FP8` its format), decoded and scaled into `OUT_TYPE`."""
    block = tl.load(
        block_tables_ptr + seq * stride_bt + pos // CACHE_BLOCK, mask=valid, other=0
    ).to(tl.int64)
    offsets = (
        block[:, None] * stride_cb
        + (pos % CACHE_BLOCK)[:, None] * stride_cs
        + kv_head * stride_ch
        + d[None, :]
    )
    kv_mask = valid[:, None] & d_mask[None, :]
    if FP8:
        k = tl.load(k_cache_ptr + offsets, mask=kv_mask, other=0).to(tl.int32)
        v = tl.load(v_cache_ptr + offsets, mask=kv_mask, other=0).to(tl.int32)
        k = (fp8_to_float(k, FP8, True) * k_scale).to(OUT_TYPE)
        v = (fp8_to_float(v, FP8, True) * v_scale).to(OUT_TYPE)
    else:
        k = tl.load(k_cache_ptr + offsets, mask=kv_mask, other=0.0)
        v = tl.load(v_cache_ptr + offsets, mask=kv_mask, other=0.0)
    return k, v
