"""Triton mixture-of-experts: every expert's MLP as two grouped GEMMs, no host sync.

The (token, slot) pairs are sorted by expert on the device and each expert's
run is padded to a multiple of BLOCK_M (`align_pairs`, torch ops without a
host sync), so each row block of the sorted order belongs to one expert. One
kernel then multiplies a row block by that expert's matrix, gathering its
input rows through the sorted pair ids and scattering its output rows back to
pair order: first x @ gate_up (rows are tokens), then the activation kernel,
then h @ down scaled by the routing weight (rows are pairs), and the K slots
of each token are summed. The weights may be MXFP4 (gpt-oss's release),
block-scaled FP8 (the `-FP8` MoE releases) or packed integers (GPTQ and AWQ
MoE releases), decoded tile by tile as the GEMM reads them. Grids are sized
from shapes alone (the padding bound, not the real counts), so a decode step
can be recorded in a CUDA graph. Reference: kernels/experts.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.expert_stack import ExpertStack
from kernels.fp8 import Fp8Block, Fp8Experts
from kernels.mxfp4 import Mxfp4Weight
from kernels.packed_int import IntExperts
from kernels.triton_fp8 import e4m3_to_float
from kernels.triton_int_linear import packed_codes
from kernels.triton_mxfp4 import mxfp4_pair
from kernels.triton_support import dot_precision, upcast_dot


@triton.jit
def grouped_gemm_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    weight_ptr,
    bias_ptr,
    b_scales_ptr,
    b_zeros_ptr,
    b_groups_ptr,
    sorted_pairs_ptr,
    block_experts_ptr,
    num_pairs,
    n_size,
    k_size,
    stride_am,
    stride_be,
    stride_bn,
    stride_se,
    stride_sn,
    stride_ge,
    stride_cm,
    stride_bias,
    A_ROW_DIVISOR: tl.constexpr,
    MUL_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    B_MXFP4: tl.constexpr,
    B_FP8: tl.constexpr,
    SCALE_ROWS: tl.constexpr,
    SCALE_COLS: tl.constexpr,
    B_INT_BITS: tl.constexpr,
    TILE_GROUP_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """C[pair] = (A[pair // A_ROW_DIVISOR] @ B[expert].T + bias[expert]) (times the
    pair's weight), for the BLOCK_M sorted pairs of this program's row block; padding
    pairs are skipped. With B_MXFP4, B is MXFP4 (b_ptr: its bytes, b_scales_ptr: its
    scales; kernels/mxfp4.py) and each tile is decoded as it is read: the low nibbles
    hold the even columns of K and the high nibbles the odd ones, so A's even and odd
    columns are multiplied by them in two dots. With B_FP8, B is e4m3 bytes with a scale
    per SCALE_ROWS x SCALE_COLS tile of each expert's matrix (kernels/fp8.py), decoded
    as the FP8 linear layer decodes them. With B_INT_BITS (2, 4 or 8), B is packed
    integers (kernels/packed_int.py's IntExperts: b_ptr its codes, b_scales_ptr and
    b_zeros_ptr per output row and group, b_groups_ptr each expert's column groups),
    decoded as the packed linear layer decodes them: per column of the tile where
    TILE_GROUP_SIZE (a run of groups whole tiles fit in), else per element."""
    block = tl.program_id(0)
    expert = tl.load(block_experts_ptr + block)
    if expert < 0:
        return  # past the last expert's padded run
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    pairs = tl.load(sorted_pairs_ptr + rows)
    row_mask = pairs < num_pairs
    a_rows = (pairs // A_ROW_DIVISOR).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < n_size
    k = tl.arange(0, BLOCK_K)
    b_base = b_ptr + expert.to(tl.int64) * stride_be + cols[None, :].to(tl.int64) * stride_bn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if B_MXFP4:
        half = tl.arange(0, BLOCK_K // 2)
        s_base = (
            b_scales_ptr + expert.to(tl.int64) * stride_se + cols[None, :].to(tl.int64) * stride_sn
        )
        for k0 in range(0, k_size, BLOCK_K):
            byte = k0 // 2 + half
            byte_mask = byte < k_size // 2
            b_mask = byte_mask[:, None] & col_mask[None, :]
            packed = tl.load(b_base + byte[:, None], mask=b_mask, other=0)
            scale = tl.load(s_base + (byte // 16)[:, None], mask=b_mask, other=0)
            b_even, b_odd = mxfp4_pair(packed, scale)
            a_even_ptr = a_ptr + a_rows[:, None] * stride_am + (2 * byte)[None, :]
            a_mask = row_mask[:, None] & byte_mask[None, :]
            a_even = tl.load(a_even_ptr, mask=a_mask, other=0.0)
            a_odd = tl.load(a_even_ptr + 1, mask=a_mask, other=0.0)
            if UPCAST:
                a_even = a_even.to(tl.float32)
                a_odd = a_odd.to(tl.float32)
            else:
                b_even = b_even.to(a_even.dtype)
                b_odd = b_odd.to(a_odd.dtype)
            acc += tl.dot(a_even, b_even, input_precision=PRECISION)
            acc += tl.dot(a_odd, b_odd, input_precision=PRECISION)
    else:
        s_base = (
            b_scales_ptr
            + expert.to(tl.int64) * stride_se
            + (cols // SCALE_ROWS)[None, :].to(tl.int64) * stride_sn
        )
        for k0 in range(0, k_size, BLOCK_K):
            k_mask = (k0 + k) < k_size
            a = tl.load(
                a_ptr + a_rows[:, None] * stride_am + (k0 + k)[None, :],
                mask=row_mask[:, None] & k_mask[None, :],
                other=0.0,
            )
            b_mask = k_mask[:, None] & col_mask[None, :]
            if B_INT_BITS > 0:
                kk = k0 + k
                code = packed_codes(
                    b_ptr + expert.to(tl.int64) * stride_be,
                    cols[None, :],
                    kk[:, None],
                    b_mask,
                    stride_bn,
                    B_INT_BITS,
                ).to(tl.float32)
                s_expert = expert.to(tl.int64) * stride_se
                if TILE_GROUP_SIZE > 0:  # the tile lies within one run of a group
                    at = s_expert + cols.to(tl.int64) * stride_sn + k0 // TILE_GROUP_SIZE
                    scale = tl.load(b_scales_ptr + at, mask=col_mask, other=0.0)[None, :]
                    zero = tl.load(b_zeros_ptr + at, mask=col_mask, other=0.0)[None, :]
                else:
                    groups_at = b_groups_ptr + expert.to(tl.int64) * stride_ge + kk
                    group = tl.load(groups_at, mask=k_mask, other=0)
                    at = s_expert + cols[None, :].to(tl.int64) * stride_sn + group[:, None]
                    scale = tl.load(b_scales_ptr + at, mask=b_mask, other=0.0)
                    zero = tl.load(b_zeros_ptr + at, mask=b_mask, other=0.0)
                b = ((code - zero) * scale).to(a.dtype)  # rounded as the reference rounds
            elif B_FP8:
                code = tl.load(b_base + (k0 + k)[:, None], mask=b_mask, other=0).to(tl.int32)
                if SCALE_COLS % BLOCK_K == 0:  # the tile is within one column of scales
                    scale = tl.load(s_base + k0 // SCALE_COLS, mask=col_mask[None, :], other=0.0)
                else:
                    scale_at = s_base + ((k0 + k) // SCALE_COLS)[:, None]
                    scale = tl.load(scale_at, mask=b_mask, other=0.0)
                b = e4m3_to_float(code) * scale
                if not UPCAST:
                    b = b.to(a.dtype)
            else:
                b = tl.load(b_base + (k0 + k)[:, None], mask=b_mask, other=0.0)
            if UPCAST:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc += tl.dot(a, b, input_precision=PRECISION)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + expert * stride_bias + cols, mask=col_mask, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    if MUL_WEIGHT:
        weight = tl.load(weight_ptr + pairs, mask=row_mask, other=0.0)
        acc = acc * weight.to(tl.float32)[:, None]
    out = c_ptr + pairs[:, None].to(tl.int64) * stride_cm + cols[None, :]
    tl.store(out, acc.to(c_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


@dataclass(frozen=True)
class AlignedPairs:
    """The (token, slot) pairs in expert order, each expert's run padded to BLOCK_M."""

    sorted_pairs: torch.Tensor  # [num_blocks * block_m] pair ids; padding = num_pairs
    block_experts: torch.Tensor  # [num_blocks] each row block's expert; -1 past the end
    block_m: int


def align_pairs(chosen: torch.Tensor, num_experts: int, block_m: int) -> AlignedPairs:
    """Sort the flattened pairs by expert and pad each run, with device ops only (no
    bincount, which reads its maximum on the host). The size is the bound for P pairs:
    at most min(P, E) runs, each padded by under BLOCK_M."""
    flat = chosen.flatten()
    num_pairs = flat.shape[0]
    device = flat.device
    order = torch.argsort(flat, stable=True)
    counts = torch.zeros(num_experts, dtype=torch.long, device=device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = torch.cumsum(padded, 0)
    run_offset = (padded_end - padded) - (torch.cumsum(counts, 0) - counts)
    destination = torch.arange(num_pairs, device=device) + run_offset[flat[order]]
    num_blocks = triton.cdiv(num_pairs + min(num_pairs, num_experts) * (block_m - 1), block_m)
    sorted_pairs = torch.full((num_blocks * block_m,), num_pairs, dtype=torch.long, device=device)
    sorted_pairs[destination] = order
    block_start = torch.arange(num_blocks, device=device) * block_m
    block_experts = torch.searchsorted(padded_end, block_start, right=True)
    block_experts = torch.where(block_experts < num_experts, block_experts, -1)
    return AlignedPairs(sorted_pairs, block_experts.to(torch.int32), block_m)


@dataclass(frozen=True)
class Tiles:
    rows: int
    cols: int
    depth: int


def _tiles(pairs_per_expert: float, element_size: int, decoded: bool, gathered: bool) -> Tiles:
    """Row blocks sized to the tokens an expert typically gets (a decode step gives each
    a handful: wide blocks would be mostly padding); fp32 tiles halved for registers,
    and their rows halved again where quantized tiles are decoded beside them (MXFP4's
    spilled on sm_90); half as deep where packed integers' scales and zeros are
    gathered per element (act-order's: 64 deep spilled on sm_80)."""
    rows = 16 if pairs_per_expert <= 16 else 32 if pairs_per_expert <= 64 else 64
    if element_size > 2:
        return Tiles(min(rows, 16 if decoded else 32), 32, 32)
    return Tiles(rows, 64, 32 if gathered else 64)


def _gathers_per_element(stack: ExpertStack) -> bool:
    """Whether a 64-deep tile would read a packed stack's scales and zeros per element
    (its groups are act-order's, or runs no whole 64-deep tile fits in). Such stacks
    take 32-deep tiles, where runs of 32 then read theirs once a tile after all; one
    such stack sets the depth of both GEMMs."""
    return isinstance(stack, IntExperts) and (stack.group_size == 0 or stack.group_size % 64 != 0)


def _grouped_gemm(
    a: torch.Tensor,
    b: ExpertStack,
    out: torch.Tensor,
    aligned: AlignedPairs,
    tiles: Tiles,
    a_row_divisor: int,
    weights: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> None:
    num_pairs = out.shape[0]
    n_size, k_size = b.shape[1], b.shape[2]
    b_scales: torch.Tensor | None = None
    b_zeros: torch.Tensor | None = None
    b_groups: torch.Tensor | None = None
    fp8_block = Fp8Block(1, 1)
    int_bits = tile_group_size = 0
    if isinstance(b, Mxfp4Weight):
        b_data, b_scales = b.blocks, b.scales
    elif isinstance(b, Fp8Experts):
        b_data, b_scales, fp8_block = b.values, b.scales, b.block
    elif isinstance(b, IntExperts):
        b_data, b_scales, b_zeros, b_groups = b.codes, b.scales, b.zeros, b.groups
        assert b_data.dtype == b_groups.dtype == torch.int32
        assert b_scales.dtype == b_zeros.dtype == torch.float32
        assert b_zeros.stride() == b_scales.stride() and b_groups.stride(-1) == 1
        int_bits = b.bits
        # Runs of groups that whole tiles fit in: their scales read once a tile.
        tile_group_size = b.group_size if b.group_size % tiles.depth == 0 else 0
    else:
        b_data = b
    assert a.stride(-1) == 1 and b_data.stride(-1) == 1 and out.stride(-1) == 1
    assert b_scales is None or b_scales.stride(-1) == 1
    grid = (aligned.block_experts.shape[0], triton.cdiv(n_size, tiles.cols))
    grouped_gemm_kernel[grid](
        a,
        b_data,
        out,
        out if weights is None else weights,
        out if bias is None else bias,
        b_data if b_scales is None else b_scales,
        b_data if b_zeros is None else b_zeros,
        b_data if b_groups is None else b_groups,
        aligned.sorted_pairs,
        aligned.block_experts,
        num_pairs,
        n_size,
        k_size,
        a.stride(0),
        b_data.stride(0),
        b_data.stride(1),
        0 if b_scales is None else b_scales.stride(0),
        0 if b_scales is None else b_scales.stride(1),
        0 if b_groups is None else b_groups.stride(0),
        out.stride(0),
        0 if bias is None else bias.stride(0),
        A_ROW_DIVISOR=a_row_divisor,
        MUL_WEIGHT=weights is not None,
        HAS_BIAS=bias is not None,
        B_MXFP4=isinstance(b, Mxfp4Weight),
        B_FP8=isinstance(b, Fp8Experts),
        SCALE_ROWS=fp8_block.rows,
        SCALE_COLS=fp8_block.cols,
        B_INT_BITS=int_bits,
        TILE_GROUP_SIZE=tile_group_size,
        BLOCK_M=tiles.rows,
        BLOCK_N=tiles.cols,
        BLOCK_K=tiles.depth,
        UPCAST=upcast_dot(grouped_gemm_kernel, a.dtype),
        PRECISION=dot_precision(a.dtype),
    )


def fused_experts(
    x: torch.Tensor,
    gate_up: ExpertStack,
    down: ExpertStack,
    weights: torch.Tensor,
    chosen: torch.Tensor,
    act_and_mul: Callable[[torch.Tensor], torch.Tensor],
    gate_up_bias: torch.Tensor | None = None,
    down_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as kernels.experts.experts: x [T, H] -> [T, H]. The weighted
    outputs are kept in the weights' dtype (Mixtral: fp32) until the slots are summed;
    biases (gpt-oss) are added in fp32 before the activation's and the weight's rounding.
    Quantized weights (MXFP4, FP8, packed integers) are decoded tile by tile inside the
    GEMMs, never whole."""
    num_tokens, top_k = chosen.shape
    num_experts = gate_up.shape[0]
    if num_tokens == 0:
        return torch.zeros_like(x)
    num_pairs = num_tokens * top_k
    decoded = not isinstance(gate_up, torch.Tensor) or not isinstance(down, torch.Tensor)
    gathered = _gathers_per_element(gate_up) or _gathers_per_element(down)
    tiles = _tiles(num_pairs / num_experts, x.element_size(), decoded, gathered)
    aligned = align_pairs(chosen, num_experts, tiles.rows)
    hidden = torch.empty(num_pairs, gate_up.shape[1], dtype=x.dtype, device=x.device)
    _grouped_gemm(x, gate_up, hidden, aligned, tiles, top_k, None, gate_up_bias)
    activated = act_and_mul(hidden)
    dtype = torch.promote_types(x.dtype, weights.dtype)
    out = torch.empty(num_pairs, down.shape[1], dtype=dtype, device=x.device)
    routing = weights.reshape(-1).contiguous()
    _grouped_gemm(activated, down, out, aligned, tiles, 1, routing, down_bias)
    return out.view(num_tokens, top_k, -1).sum(dim=1).to(x.dtype)
