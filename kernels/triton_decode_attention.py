"""Triton paged attention for decodes: one query token per sequence over its paged KV.

Flash-decoding: a sequence's context is cut into partitions of
`partition_size` tokens, and one program per (sequence, KV head, partition)
attends all the query heads that share that KV head (GQA: K/V are read once
per group, not once per query head). With one partition the program writes
the final output; otherwise each writes its normalised partial output and
log-sum-exp, and a second small kernel combines them, so a long context at
batch 1 still spreads over many programs. Reference: the decode path of
`kernels.torch_attention.TorchAttentionBackend`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.kv_cache_dtype import UNIT_SCALES, KvScales
from kernels.triton_attention_scores import LOG2E, scaled_scores, score_scales
from kernels.triton_paged_kv import kernel_caches, load_kv_tile
from kernels.triton_support import dot_precision, upcast_dot

PARTITION_SIZE = 512


@triton.jit
def decode_partition_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    context_lens_ptr,
    out_ptr,
    lse_ptr,
    sinks_ptr,
    score_pre,
    score_post,
    k_scale,
    v_scale,
    stride_qt,
    stride_qh,
    stride_cb,
    stride_cs,
    stride_ch,
    stride_bt,
    stride_ot,
    stride_oh,
    stride_op,
    stride_lt,
    stride_lh,
    head_dim,
    window,
    GROUP: tl.constexpr,
    CACHE_BLOCK: tl.constexpr,
    PARTITION: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SPLIT: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    SOFTCAP: tl.constexpr,
    SINKS: tl.constexpr,
    FP8: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    part = tl.program_id(2)
    context_len = tl.load(context_lens_ptr + seq)
    start = part * PARTITION
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    heads = kv_head * GROUP + g
    g_mask = g < GROUP
    d_mask = d < head_dim
    out_offsets = seq * stride_ot + heads[:, None] * stride_oh + part * stride_op + d[None, :]
    if start >= context_len:
        if not SPLIT:
            # Only a row with no context gets here (a recorded graph's padding): zeros.
            zeros = tl.zeros([BLOCK_G, BLOCK_D], dtype=out_ptr.dtype.element_ty)
            tl.store(out_ptr + out_offsets, zeros, mask=g_mask[:, None] & d_mask[None, :])
        return
    end = tl.minimum(start + PARTITION, context_len)
    # A sliding window (window > 0) sees only the last `window` keys: partitions wholly
    # before them are skipped (the combine skips them too).
    first = tl.maximum(context_len - window, 0) if window > 0 else 0
    if end <= first:
        return
    q = tl.load(
        q_ptr + seq * stride_qt + heads[:, None] * stride_qh + d[None, :],
        mask=g_mask[:, None] & d_mask[None, :],
        other=0.0,
    )
    if UPCAST:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    if SINKS and not SPLIT:
        # The head's sink is one more key, with no value: the sums start from it (the
        # combine adds it instead where partitions are split).
        m_i = tl.load(sinks_ptr + heads, mask=g_mask, other=0.0) * LOG2E
        l_i = tl.full([BLOCK_G], 1.0, dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    for n0 in range(tl.maximum(start, first), end, BLOCK_N):
        pos = n0 + tl.arange(0, BLOCK_N)
        valid = pos < end
        k, v = load_kv_tile(
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
            CACHE_BLOCK,
            FP8,
            q_ptr.dtype.element_ty,
        )
        if UPCAST:
            k = k.to(tl.float32)
        dots = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        s = scaled_scores(dots, score_pre, score_post, SOFTCAP)
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        p = p.to(v.dtype)
        if UPCAST:
            p = p.to(tl.float32)
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=PRECISION)
        m_i = m_new

    out = acc / l_i[:, None]
    tl.store(
        out_ptr + out_offsets,
        out.to(out_ptr.dtype.element_ty),
        mask=g_mask[:, None] & d_mask[None, :],
    )
    if SPLIT:
        # log2-domain log-sum-exp of this partition's scores, for the combine.
        tl.store(
            lse_ptr + seq * stride_lt + heads * stride_lh + part, m_i + tl.log2(l_i), mask=g_mask
        )


@triton.jit
def decode_combine_kernel(
    partial_ptr,
    lse_ptr,
    context_lens_ptr,
    out_ptr,
    sinks_ptr,
    stride_pt,
    stride_ph,
    stride_pp,
    stride_lt,
    stride_lh,
    stride_ot,
    stride_oh,
    head_dim,
    window,
    PARTITION: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINKS: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    context_len = tl.load(context_lens_ptr + seq)
    num_parts = tl.cdiv(context_len, PARTITION)
    first_part = tl.maximum(context_len - window, 0) // PARTITION if window > 0 else 0
    p = tl.arange(0, BLOCK_P)
    d = tl.arange(0, BLOCK_D)
    if num_parts == 0:
        # A row with no context (a recorded graph's padding): zeros, not 0/0.
        zeros = tl.zeros([BLOCK_D], dtype=out_ptr.dtype.element_ty)
        tl.store(out_ptr + seq * stride_ot + head * stride_oh + d, zeros, mask=d < head_dim)
        return
    p_mask = (p < num_parts) & (p >= first_part)
    lse = tl.load(lse_ptr + seq * stride_lt + head * stride_lh + p, mask=p_mask, other=0.0)
    lse = tl.where(p_mask, lse, float("-inf"))
    top = tl.max(lse, 0)
    if SINKS:
        # The sink joins the denominator as a partition of its own with no output.
        sink = tl.load(sinks_ptr + head) * LOG2E
        top = tl.maximum(top, sink)
        weight = tl.exp2(lse - top)
        weight = weight / (tl.sum(weight, 0) + tl.exp2(sink - top))
    else:
        weight = tl.exp2(lse - top)
        weight = weight / tl.sum(weight, 0)
    partial = tl.load(
        partial_ptr + seq * stride_pt + head * stride_ph + p[:, None] * stride_pp + d[None, :],
        mask=p_mask[:, None] & (d[None, :] < head_dim),
        other=0.0,
    )
    out = tl.sum(partial * weight[:, None], 0)
    tl.store(
        out_ptr + seq * stride_ot + head * stride_oh + d,
        out.to(out_ptr.dtype.element_ty),
        mask=d < head_dim,
    )


@dataclass(frozen=True)
class DecodeBatch:
    """One step's decodes as the kernels read them; built once per step, used by every layer."""

    block_tables: torch.Tensor  # [B, max_blocks] int32
    context_lens: torch.Tensor  # [B] int32
    num_partitions: int
    partition_size: int


def make_decode_batch(
    block_tables: torch.Tensor, context_lens: list[int], partition_size: int = PARTITION_SIZE
) -> DecodeBatch:
    """`context_lens` on the host sizes the grid; the tensors go to the kernels."""
    # A power of two of at least 16: tiles of min(64, partition) keys must divide it,
    # and tl.dot needs every tile dimension >= 16 on a GPU.
    assert partition_size >= 16 and partition_size & (partition_size - 1) == 0
    num_partitions = triton.cdiv(max(context_lens), partition_size)
    lens = torch.tensor(context_lens, dtype=torch.int32).to(block_tables.device)
    return DecodeBatch(block_tables, lens, num_partitions, partition_size)


def _keys_per_tile(element_size: int, head_dim: int, fp8_cache: bool = False) -> int:
    """64 keys per tile in 16-bit dtypes. fp32 spilled registers with more than 16 past
    head_dim 64 (on sm_90: 64 keys or 4 warps at head_dim 128, 32 keys with 8 query
    heads per KV head, and at Gemma's 256), checked by python -m
    kernels.triton_offline_compile; with 8 warps (below), 16. Decoding an FP8 cache
    takes registers of its own: past head_dim 64, 64 keys spilled on sm_90 (Llama-3-8B,
    Gemma), and so did 32 with 8 query heads per KV head (Qwen3-30B-A3B); 16 did not
    for any shape (at most 164 registers)."""
    if element_size <= 2:
        return 16 if fp8_cache and head_dim > 64 else 64
    return 16 if head_dim > 64 else 32


def decode_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    batch: DecodeBatch,
    scale: float,
    out: torch.Tensor | None = None,
    window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    kv_scales: KvScales = UNIT_SCALES,
) -> torch.Tensor:
    """query [B, heads, D] (one token per sequence) -> out [B, heads, D]; with `window`
    each query sees only its sequence's last `window` keys, with `softcap` scores are
    squashed to softcap * tanh(score / softcap) (Gemma 2), and `sinks` ([heads] fp32,
    gpt-oss) add each head's logit to its softmax's denominator."""
    num_seqs, num_heads, head_dim = query.shape
    num_kv_heads = key_cache.shape[2]
    group = num_heads // num_kv_heads
    if out is None:
        out = torch.empty_like(query)
    if num_seqs == 0:
        return out
    assert query.stride(-1) == 1 and out.stride(-1) == 1
    assert key_cache.stride() == value_cache.stride() and key_cache.stride(-1) == 1
    key_cache, value_cache, fp8 = kernel_caches(key_cache, value_cache)
    parts = batch.num_partitions
    split = parts > 1
    if split:
        partial = torch.empty(
            num_seqs, num_heads, parts, head_dim, dtype=torch.float32, device=query.device
        )
        lse = torch.empty(num_seqs, num_heads, parts, dtype=torch.float32, device=query.device)
        target, stride_op = partial, partial.stride(2)
        lse_strides = (lse.stride(0), lse.stride(1))
    else:
        target, stride_op, lse = out, 0, out
        lse_strides = (0, 0)
    block_d = max(16, triton.next_power_of_2(head_dim))
    scales = score_scales(scale, softcap)
    decode_partition_kernel[(num_seqs, num_kv_heads, parts)](
        query,
        key_cache,
        value_cache,
        batch.block_tables,
        batch.context_lens,
        target,
        lse,
        target if sinks is None else sinks,
        *scales,
        kv_scales.k,
        kv_scales.v,
        query.stride(0),
        query.stride(1),
        key_cache.stride(0),
        key_cache.stride(1),
        key_cache.stride(2),
        batch.block_tables.stride(0),
        target.stride(0),
        target.stride(1),
        stride_op,
        *lse_strides,
        head_dim,
        window or 0,
        GROUP=group,
        CACHE_BLOCK=key_cache.shape[1],
        PARTITION=batch.partition_size,
        BLOCK_G=max(16, triton.next_power_of_2(group)),
        BLOCK_N=min(
            _keys_per_tile(query.element_size(), head_dim, fp8_cache=fp8 != 0),
            batch.partition_size,
        ),
        BLOCK_D=block_d,
        SPLIT=split,
        UPCAST=upcast_dot(decode_partition_kernel, query.dtype),
        PRECISION=dot_precision(query.dtype),
        SOFTCAP=softcap is not None,
        SINKS=sinks is not None,
        FP8=fp8,
        num_warps=8 if head_dim > 64 and query.element_size() > 2 else 4,
    )
    if split:
        decode_combine_kernel[(num_seqs, num_heads)](
            partial,
            lse,
            batch.context_lens,
            out,
            out if sinks is None else sinks,
            partial.stride(0),
            partial.stride(1),
            partial.stride(2),
            lse.stride(0),
            lse.stride(1),
            out.stride(0),
            out.stride(1),
            head_dim,
            window or 0,
            PARTITION=batch.partition_size,
            BLOCK_P=triton.next_power_of_2(parts),
            BLOCK_D=block_d,
            SINKS=sinks is not None,
        )
    return out
