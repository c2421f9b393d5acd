"""Triton store_kv: write each new token's K and V into the paged cache at its slot.

One program per token copies all of its KV heads, for keys and values, so a
step costs one launch per layer however the batch is mixed. A negative slot
is skipped (a padding row). Into an FP8 cache (kernels/kv_cache_dtype.py) each
value is multiplied by its layer's 1 / scale and encoded on the way. Reference:
`kernels.torch_attention.store_kv`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.kv_cache_dtype import UNIT_SCALES, KvScales
from kernels.triton_fp8 import float_to_fp8
from kernels.triton_paged_kv import kernel_caches


@triton.jit
def store_kv_kernel(
    key_ptr,
    value_ptr,
    key_cache_ptr,
    value_cache_ptr,
    slot_mapping_ptr,
    k_inverse,
    v_inverse,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_cb,
    stride_cs,
    stride_ch,
    num_kv_heads,
    head_dim,
    CACHE_BLOCK: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    FP8: tl.constexpr,
):
    token = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:
        return
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, BLOCK_D)[None, :]
    mask = (heads < num_kv_heads) & (dims < head_dim)
    cache_offsets = (
        (slot // CACHE_BLOCK) * stride_cb
        + (slot % CACHE_BLOCK) * stride_cs
        + heads * stride_ch
        + dims
    )
    k = tl.load(key_ptr + token * stride_kt + heads * stride_kh + dims, mask=mask)
    v = tl.load(value_ptr + token * stride_vt + heads * stride_vh + dims, mask=mask)
    if FP8:
        k = float_to_fp8(k.to(tl.float32) * k_inverse, FP8).to(tl.uint8)
        v = float_to_fp8(v.to(tl.float32) * v_inverse, FP8).to(tl.uint8)
    tl.store(key_cache_ptr + cache_offsets, k, mask=mask)
    tl.store(value_cache_ptr + cache_offsets, v, mask=mask)


def store_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    scales: KvScales = UNIT_SCALES,
) -> None:
    """key/value [T, kv_heads, D], caches [blocks, block_size, kv_heads, D]; D contiguous.
    `scales`: the layer's, for an FP8 cache."""
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    assert key.stride(-1) == value.stride(-1) == 1, "head_dim must be contiguous"
    assert key_cache.stride() == value_cache.stride() and key_cache.stride(-1) == 1
    key_cache, value_cache, fp8 = kernel_caches(key_cache, value_cache)
    store_kv_kernel[(num_tokens,)](
        key,
        value,
        key_cache,
        value_cache,
        slot_mapping,
        1.0 / scales.k,  # a multiply, as the reference (kernels/kv_cache_dtype.py)
        1.0 / scales.v,
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        key_cache.stride(0),
        key_cache.stride(1),
        key_cache.stride(2),
        num_kv_heads,
        head_dim,
        CACHE_BLOCK=key_cache.shape[1],
        BLOCK_H=triton.next_power_of_2(num_kv_heads),
        BLOCK_D=triton.next_power_of_2(head_dim),
        FP8=fp8,
    )
