"""Triton linear layer on block-scaled FP8 weights (kernels/fp8.py): x @ W.T + bias.

Up to kernels/fp8.py's FP8_GEMM_MAX_ROWS rows (decode steps, small prefill
chunks: bound by reading the weights), one GEMM reads the weight's bytes and decodes each tile
in registers, the e4m3 value from its bits times its tile's scale, rounded to
the activations' dtype as the reference rounds the dequantized matrix; the
product accumulates in fp32. That reads a byte a weight where bf16 reads two.
Past it (long prefill chunks: bound by compute), the matrix is dequantized
into a scratch copy once and multiplied by cuBLAS, whose GEMM is faster than
an untuned Triton one; by arithmetic the copy costs ~15% of a 2048-row
product on an H200, more just past the limit (the engine keeps the largest
copy's bytes out of the KV cache). The limit, and whether small batches need
a split over K to fill the GPU, wait on `benchmarks/fp8_linear.py` on a GPU.
Reference: kernels/fp8.py's `dequantize`, then `F.linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels import fp8
from kernels.fp8 import Fp8Block
from kernels.triton_fp8 import e4m3_to_float
from kernels.triton_support import dot_precision, gemm_tiles, upcast_dot


@triton.jit
def fp8_linear_kernel(
    x_ptr,
    w_ptr,
    scale_ptr,
    bias_ptr,
    out_ptr,
    m_size,
    n_size,
    k_size,
    stride_xm,
    stride_wn,
    stride_sn,
    stride_om,
    SCALE_ROWS: tl.constexpr,
    SCALE_COLS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """out[rows, cols] = x[rows] @ (W[cols] * scales).T (+ bias), W's tiles decoded as read."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < m_size
    col_mask = cols < n_size
    k = tl.arange(0, BLOCK_K)
    x_base = x_ptr + rows[:, None].to(tl.int64) * stride_xm
    w_base = w_ptr + cols[None, :].to(tl.int64) * stride_wn
    s_base = scale_ptr + (cols // SCALE_ROWS)[None, :] * stride_sn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, k_size, BLOCK_K):
        kk = k0 + k
        k_mask = kk < k_size
        a = tl.load(x_base + kk[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w_mask = k_mask[:, None] & col_mask[None, :]
        code = tl.load(w_base + kk[:, None], mask=w_mask, other=0).to(tl.int32)
        if SCALE_COLS % BLOCK_K == 0:  # the tile is within one column of scales
            scale = tl.load(s_base + k0 // SCALE_COLS, mask=col_mask[None, :], other=0.0)
        else:
            scale = tl.load(s_base + (kk // SCALE_COLS)[:, None], mask=w_mask, other=0.0)
        b = e4m3_to_float(code) * scale
        if UPCAST:
            a = a.to(tl.float32)
        else:
            b = b.to(a.dtype)
        acc += tl.dot(a, b, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + rows[:, None].to(tl.int64) * stride_om + cols[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


@triton.jit
def fp8_dequantize_kernel(
    w_ptr,
    scale_ptr,
    out_ptr,
    n_size,
    k_size,
    stride_wn,
    stride_sn,
    stride_on,
    SCALE_ROWS: tl.constexpr,
    SCALE_COLS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """out[rows, cols] = W[rows, cols] * its tile's scale, in out's dtype."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows < n_size)[:, None] & (cols < k_size)[None, :]
    code = tl.load(
        w_ptr + rows[:, None].to(tl.int64) * stride_wn + cols[None, :], mask=mask, other=0
    ).to(tl.int32)
    scale = tl.load(
        scale_ptr + (rows // SCALE_ROWS)[:, None] * stride_sn + (cols // SCALE_COLS)[None, :],
        mask=mask,
        other=0.0,
    )
    value = e4m3_to_float(code) * scale
    out = out_ptr + rows[:, None].to(tl.int64) * stride_on + cols[None, :]
    tl.store(out, value.to(out_ptr.dtype.element_ty), mask=mask)


def dequantize_fp8(
    values: torch.Tensor, scales: torch.Tensor, block: Fp8Block, dtype: torch.dtype
) -> torch.Tensor:
    """The whole matrix in `dtype` (kernels/fp8.py's `dequantize`, on the device)."""
    n_size, k_size = values.shape
    assert values.dtype == torch.uint8, "e4m3 bits as uint8 (a float8 tensor would convert)"
    assert values.stride(-1) == 1 and scales.stride(-1) == 1
    out = torch.empty(n_size, k_size, dtype=dtype, device=values.device)
    grid = (triton.cdiv(n_size, 64), triton.cdiv(k_size, 64))
    fp8_dequantize_kernel[grid](
        values,
        scales,
        out,
        n_size,
        k_size,
        values.stride(0),
        scales.stride(0),
        out.stride(0),
        SCALE_ROWS=block.rows,
        SCALE_COLS=block.cols,
        BLOCK_N=64,
        BLOCK_K=64,
    )
    return out


def fp8_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    scales: torch.Tensor,
    block: Fp8Block,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [..., in] @ (values [out, in] uint8 e4m3 * scales per `block` tile).T + bias ->
    [..., out] in x's dtype."""
    n_size, k_size = values.shape
    assert values.dtype == torch.uint8, "e4m3 bits as uint8 (a float8 tensor would convert)"
    flat = x.reshape(-1, k_size)
    m_size = flat.shape[0]
    if m_size > fp8.FP8_GEMM_MAX_ROWS:
        return F.linear(x, dequantize_fp8(values, scales, block, x.dtype), bias)
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    assert values.stride(-1) == 1 and scales.stride(-1) == 1
    out = torch.empty(m_size, n_size, dtype=x.dtype, device=x.device)
    if m_size == 0:
        return out.view(*x.shape[:-1], n_size)
    rows, cols, depth = gemm_tiles(m_size, x.element_size())
    grid = (triton.cdiv(m_size, rows), triton.cdiv(n_size, cols))
    fp8_linear_kernel[grid](
        flat,
        values,
        scales,
        out if bias is None else bias,
        out,
        m_size,
        n_size,
        k_size,
        flat.stride(0),
        values.stride(0),
        scales.stride(0),
        out.stride(0),
        SCALE_ROWS=block.rows,
        SCALE_COLS=block.cols,
        HAS_BIAS=bias is not None,
        BLOCK_M=rows,
        BLOCK_N=cols,
        BLOCK_K=depth,
        UPCAST=upcast_dot(fp8_linear_kernel, x.dtype),
        PRECISION=dot_precision(x.dtype),
    )
    return out.view(*x.shape[:-1], n_size)
