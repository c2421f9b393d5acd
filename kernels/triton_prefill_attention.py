"""Triton paged attention for prefill chunks: variable-length queries over paged KV.

The batch is flattened: sequence i owns query rows
`query_start[i]:query_start[i + 1]`, the last `q_len` positions of its
`context_len` tokens. store_kv has already written the chunk's own K/V into
the cache, so every key (cached prefix and new tokens alike) is read through
the block table, and causality is one comparison of absolute positions (an
encoder's step, `causal` False, sees its whole prompt: no comparison). One
program per (sequence, tile of BLOCK_M query rows, query head); tiles past a
sequence's length exit at once. Reference: the prefill path of
`kernels.torch_attention.TorchAttentionBackend`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.kv_cache_dtype import UNIT_SCALES, KvScales, is_fp8
from kernels.triton_attention_scores import LOG2E, scaled_scores, score_scales
from kernels.triton_paged_kv import kernel_caches, load_kv_tile
from kernels.triton_support import dot_precision, upcast_dot


@triton.jit
def prefill_attention_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    query_start_ptr,
    context_lens_ptr,
    out_ptr,
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
    head_dim,
    window,
    GROUP: tl.constexpr,
    CACHE_BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    SOFTCAP: tl.constexpr,
    SINKS: tl.constexpr,
    FP8: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    seq = tl.program_id(0)
    tile = tl.program_id(1)
    head = tl.program_id(2)
    q_start = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_start
    m0 = tile * BLOCK_M
    if m0 >= q_len:
        return
    context_len = tl.load(context_lens_ptr + seq)
    prefix = context_len - q_len
    kv_head = head // GROUP

    rows = m0 + tl.arange(0, BLOCK_M)
    row_mask = rows < q_len
    q_pos = prefix + rows
    d = tl.arange(0, BLOCK_D)
    d_mask = d < head_dim
    q_offsets = (q_start + rows)[:, None].to(tl.int64) * stride_qt + head * stride_qh + d[None, :]
    q = tl.load(q_ptr + q_offsets, mask=row_mask[:, None] & d_mask[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    if SINKS:
        # The head's sink is one more key, with no value: the sums start from it.
        m_i = tl.full([BLOCK_M], 1.0, dtype=tl.float32) * (tl.load(sinks_ptr + head) * LOG2E)
        l_i = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # Keys past the tile's last query position are masked for every row: skip them.
    kv_end = tl.minimum(context_len, prefix + m0 + BLOCK_M) if CAUSAL else context_len
    # A sliding window (window > 0): keys before the tile's first row's window are
    # masked for every row: skip them too.
    kv_start = tl.maximum(prefix + m0 - window + 1, 0) if window > 0 else 0
    for n0 in range(kv_start, kv_end, BLOCK_N):
        pos = n0 + tl.arange(0, BLOCK_N)
        valid = pos < kv_end
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
        # A row's own key is always visible, so no row is ever fully masked.
        if CAUSAL:
            visible = valid[None, :] & (pos[None, :] <= q_pos[:, None])
        else:
            visible = valid[None, :] & row_mask[:, None]
        if window > 0:
            visible = visible & (pos[None, :] > q_pos[:, None] - window)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # Under a window a row may see no key of this tile yet (the tile starts at the
        # first row's window): subtract 0 there, not -inf, so its sums stay 0, not NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        p = p.to(v.dtype)
        if UPCAST:
            p = p.to(tl.float32)
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=PRECISION)
        m_i = m_new

    out = acc / l_i[:, None]
    out_offsets = (q_start + rows)[:, None].to(tl.int64) * stride_ot + head * stride_oh
    tl.store(
        out_ptr + out_offsets + d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=row_mask[:, None] & d_mask[None, :],
    )


@dataclass(frozen=True)
class PrefillBatch:
    """One step's prefill chunks as the kernel reads them; built once per step."""

    block_tables: torch.Tensor  # [S, max_blocks] int32
    query_start: torch.Tensor  # [S + 1] int32, rows relative to the query tensor passed in
    context_lens: torch.Tensor  # [S] int32
    max_query_len: int
    # False (an encoder's step): every query sees every key of its sequence.
    causal: bool = True


def make_prefill_batch(
    block_tables: torch.Tensor,
    query_lens: list[int],
    context_lens: list[int],
    causal: bool = True,
) -> PrefillBatch:
    device = block_tables.device
    starts = [0]
    for q_len in query_lens:
        starts.append(starts[-1] + q_len)
    return PrefillBatch(
        block_tables,
        torch.tensor(starts, dtype=torch.int32).to(device),
        torch.tensor(context_lens, dtype=torch.int32).to(device),
        max(query_lens, default=0),
        causal,
    )


@dataclass(frozen=True)
class Tiles:
    rows: int  # query rows per program
    keys: int  # keys per inner step
    warps: int


def _tiles(element_size: int, head_dim: int, fp8_cache: bool = False) -> Tiles:
    """The largest tiles that compile without spilling registers on sm_80 and sm_90
    (python -m kernels.triton_offline_compile): 64 x 64 in 16-bit dtypes, 64 x 32 past
    head_dim 64, with 8 warps past 128 (Gemma's 256); fp32 (twice the bytes, exact
    "ieee" dots without tensor cores) 32 x 32, 8 warps past head_dim 64, 32 x 16 past 128.
    Decoding an FP8 cache's tiles takes registers of its own: past head_dim 64, 64 x 32
    and 32 x 32 spilled on sm_80 (e4m3 at head_dim 128) and 32 x 16 did not (at most 233
    registers), so FP8 caches take 32 x 16 there.
    """
    if element_size <= 2:
        if fp8_cache and head_dim > 64:
            return Tiles(32, 16, 4 if head_dim <= 128 else 8)
        return Tiles(64, 64 if head_dim <= 64 else 32, 4 if head_dim <= 128 else 8)
    return Tiles(32, 32 if head_dim <= 128 else 16, 4 if head_dim <= 64 else 8)


def prefill_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    batch: PrefillBatch,
    scale: float,
    out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    kv_scales: KvScales = UNIT_SCALES,
) -> torch.Tensor:
    """query [T, heads, D] (all chunks' rows) -> out [T, heads, D]; K/V already stored.
    With `window` a query at position p sees only keys p - window + 1 ... p; with
    `softcap` scores are squashed to softcap * tanh(score / softcap) (Gemma 2); `sinks`
    ([heads] fp32, gpt-oss) add each head's logit to its softmax's denominator. A batch
    that is not `causal` (an encoder's) attends every key of its sequences."""
    num_tokens, num_heads, head_dim = query.shape
    tiles = _tiles(query.element_size(), head_dim, fp8_cache=is_fp8(key_cache.dtype))
    block_m, block_n = block_m or tiles.rows, block_n or tiles.keys
    num_kv_heads = key_cache.shape[2]
    if out is None:
        out = torch.empty_like(query)
    num_seqs = batch.context_lens.shape[0]
    if num_tokens == 0 or num_seqs == 0:
        return out
    assert query.stride(-1) == 1 and out.stride(-1) == 1
    assert key_cache.stride() == value_cache.stride() and key_cache.stride(-1) == 1
    key_cache, value_cache, fp8 = kernel_caches(key_cache, value_cache)
    grid = (num_seqs, triton.cdiv(batch.max_query_len, block_m), num_heads)
    scales = score_scales(scale, softcap)
    prefill_attention_kernel[grid](
        query,
        key_cache,
        value_cache,
        batch.block_tables,
        batch.query_start,
        batch.context_lens,
        out,
        out if sinks is None else sinks,
        *scales,
        kv_scales.k,
        kv_scales.v,
        query.stride(0),
        query.stride(1),
        key_cache.stride(0),
        key_cache.stride(1),
        key_cache.stride(2),
        batch.block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        head_dim,
        window or 0,
        GROUP=num_heads // num_kv_heads,
        CACHE_BLOCK=key_cache.shape[1],
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        UPCAST=upcast_dot(prefill_attention_kernel, query.dtype),
        PRECISION=dot_precision(query.dtype),
        SOFTCAP=softcap is not None,
        SINKS=sinks is not None,
        FP8=fp8,
        CAUSAL=batch.causal,
        num_warps=tiles.warps,
    )
    return out
