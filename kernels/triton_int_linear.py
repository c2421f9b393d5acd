"""Triton linear layer on packed integer weights (kernels/packed_int.py): x @ W.T + bias.

Up to kernels/packed_int.py's INT_GEMM_MAX_ROWS rows (decode steps, small
prefill chunks: bound by reading the weights), one GEMM reads each row's
int32 words and decodes its codes in registers: the code shifted out of its
word, less its group's zero, times its group's scale, in fp32 and rounded to
the activations' dtype as the reference rounds the dequantized matrix; the
product accumulates in fp32. A 4-bit weight is half a byte (plus its group's
scale and zero) where bf16 is two. Past the limit (long prefill chunks: bound
by compute), the matrix is dequantized into a scratch copy once and
multiplied by cuBLAS, as kernels/triton_fp8_linear.py does. Each element's
group is read from `groups`, so act-order's shuffled groups cost nothing
extra in code; where groups are plain runs whole tiles fit in (the common
non-act-order case), a tile reads its scale and zero per output column once
instead. What each costs in bandwidth waits on a GPU
(`python -m benchmarks.int_linear`, `--act-order` for the other path).
Reference: kernels/packed_int.py's `dequantize`, then `F.linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels import packed_int
from kernels.packed_int import PackedInt
from kernels.triton_support import dot_precision, gemm_tiles, upcast_dot


@triton.jit
def _decode(w_ptr, scale_ptr, zero_ptr, group_ptr, rows, cols, mask, stride_wn, stride_sn, BITS):
    """W[rows, cols] (rows: output channels, cols: input columns) in fp32, each column's
    group read from `groups`."""
    group = tl.load(group_ptr + cols, mask=mask, other=0)
    at = rows.to(tl.int64) * stride_sn + group
    scale = tl.load(scale_ptr + at, mask=mask, other=0.0)
    zero = tl.load(zero_ptr + at, mask=mask, other=0.0)
    return (packed_codes(w_ptr, rows, cols, mask, stride_wn, BITS).to(tl.float32) - zero) * scale


@triton.jit
def packed_codes(w_ptr, rows, cols, mask, stride_wn, BITS):
    """The unsigned codes of W[rows, cols], shifted out of their int32 words."""
    per_word: tl.constexpr = 32 // BITS
    word = tl.load(w_ptr + rows.to(tl.int64) * stride_wn + cols // per_word, mask=mask, other=0)
    return (word >> ((cols % per_word) * BITS)) & ((1 << BITS) - 1)


@triton.jit
def int_linear_kernel(
    x_ptr,
    w_ptr,
    scale_ptr,
    zero_ptr,
    group_ptr,
    bias_ptr,
    out_ptr,
    m_size,
    n_size,
    k_size,
    stride_xm,
    stride_wn,
    stride_sn,
    stride_om,
    BITS: tl.constexpr,
    TILE_GROUP_SIZE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """out[rows, cols] = x[rows] @ W[cols].T (+ bias), W's codes decoded as read."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < m_size
    col_mask = cols < n_size
    k = tl.arange(0, BLOCK_K)
    x_base = x_ptr + rows[:, None].to(tl.int64) * stride_xm
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, k_size, BLOCK_K):
        kk = k0 + k
        k_mask = kk < k_size
        a = tl.load(x_base + kk[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w_mask = k_mask[:, None] & col_mask[None, :]
        if TILE_GROUP_SIZE > 0:  # the tile lies within one run: a scale and zero per column
            at = cols.to(tl.int64) * stride_sn + k0 // TILE_GROUP_SIZE
            scale = tl.load(scale_ptr + at, mask=col_mask, other=0.0)[None, :]
            zero = tl.load(zero_ptr + at, mask=col_mask, other=0.0)[None, :]
            code = packed_codes(w_ptr, cols[None, :], kk[:, None], w_mask, stride_wn, BITS)
            b = ((code.to(tl.float32) - zero) * scale).to(a.dtype)
        else:
            b = _decode(
                w_ptr,
                scale_ptr,
                zero_ptr,
                group_ptr,
                cols[None, :],
                kk[:, None],
                w_mask,
                stride_wn,
                stride_sn,
                BITS,
            ).to(a.dtype)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc += tl.dot(a, b, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + rows[:, None].to(tl.int64) * stride_om + cols[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


@triton.jit
def int_dequantize_kernel(
    w_ptr,
    scale_ptr,
    zero_ptr,
    group_ptr,
    out_ptr,
    n_size,
    k_size,
    stride_wn,
    stride_sn,
    stride_on,
    BITS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """out[rows, cols] = W[rows, cols], in out's dtype."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows < n_size)[:, None] & (cols < k_size)[None, :]
    value = _decode(
        w_ptr,
        scale_ptr,
        zero_ptr,
        group_ptr,
        rows[:, None],
        cols[None, :],
        mask,
        stride_wn,
        stride_sn,
        BITS,
    )
    out = out_ptr + rows[:, None].to(tl.int64) * stride_on + cols[None, :]
    tl.store(out, value.to(out_ptr.dtype.element_ty), mask=mask)


def _check(weight: PackedInt) -> None:
    assert weight.codes.dtype == torch.int32 and weight.groups.dtype == torch.int32
    assert weight.scales.dtype == torch.float32 and weight.zeros.dtype == torch.float32
    assert weight.codes.stride(-1) == 1 and weight.scales.stride(-1) == 1
    assert weight.zeros.stride() == weight.scales.stride()


def dequantize_int(weight: PackedInt, dtype: torch.dtype) -> torch.Tensor:
    """The whole matrix in `dtype` (kernels/packed_int.py's `dequantize`, on the device)."""
    _check(weight)
    n_size, k_size = weight.codes.shape[0], weight.in_features
    out = torch.empty(n_size, k_size, dtype=dtype, device=weight.codes.device)
    grid = (triton.cdiv(n_size, 64), triton.cdiv(k_size, 64))
    int_dequantize_kernel[grid](
        weight.codes,
        weight.scales,
        weight.zeros,
        weight.groups,
        out,
        n_size,
        k_size,
        weight.codes.stride(0),
        weight.scales.stride(0),
        out.stride(0),
        BITS=weight.bits,
        BLOCK_N=64,
        BLOCK_K=64,
    )
    return out


def int_linear(
    x: torch.Tensor, weight: PackedInt, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [..., in] @ W.T + bias -> [..., out] in x's dtype."""
    _check(weight)
    n_size, k_size = weight.codes.shape[0], weight.in_features
    assert x.shape[-1] == k_size, f"input of width {x.shape[-1]} for {k_size} input columns"
    flat = x.reshape(-1, k_size)
    m_size = flat.shape[0]
    if m_size > packed_int.INT_GEMM_MAX_ROWS:
        return F.linear(x, dequantize_int(weight, x.dtype), bias)
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    out = torch.empty(m_size, n_size, dtype=x.dtype, device=x.device)
    if m_size == 0:
        return out.view(*x.shape[:-1], n_size)
    # fp32 tiles 32 deep spill registers on sm90: codes, groups, scales and zeros decoded.
    rows, cols, depth = gemm_tiles(m_size, x.element_size(), fp32_depth=16)
    grid = (triton.cdiv(m_size, rows), triton.cdiv(n_size, cols))
    int_linear_kernel[grid](
        flat,
        weight.codes,
        weight.scales,
        weight.zeros,
        weight.groups,
        out if bias is None else bias,
        out,
        m_size,
        n_size,
        k_size,
        flat.stride(0),
        weight.codes.stride(0),
        weight.scales.stride(0),
        out.stride(0),
        BITS=weight.bits,
        # Runs of groups that whole tiles fit in: their scales read once a tile.
        TILE_GROUP_SIZE=weight.group_size if weight.group_size % depth == 0 else 0,
        HAS_BIAS=bias is not None,
        BLOCK_M=rows,
        BLOCK_N=cols,
        BLOCK_K=depth,
        UPCAST=upcast_dot(int_linear_kernel, x.dtype),
        PRECISION=dot_precision(x.dtype),
    )
    return out.view(*x.shape[:-1], n_size)
