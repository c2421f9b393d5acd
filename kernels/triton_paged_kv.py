"""Reading one tile of keys and values out of the paged KV cache, inside a Triton kernel.

Shared by the decode and prefill attention kernels: token positions go
through the sequence's block table to (block, slot), masked past `valid`.
"""

from __future__ import annotations

import triton
import triton.language as tl


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
    CACHE_BLOCK: tl.constexpr,
):
    """K and V ([BLOCK_N, BLOCK_D]) for the token positions `pos` of sequence `seq`."""
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
    k = tl.load(k_cache_ptr + offsets, mask=kv_mask, other=0.0)
    v = tl.load(v_cache_ptr + offsets, mask=kv_mask, other=0.0)
    return k, v
