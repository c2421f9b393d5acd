"""Weights held as packed integer codes (GPTQ, AWQ, compressed-tensors' W4A16): the
layout the engine keeps them in, and the torch reference of their matmul.

A matrix W [out, in] is held as
- `codes`: int32 [out, ceil(in / (32 / bits))], each row's unsigned `bits`-bit
  codes packed along the input dimension, the lowest bits first;
- `scales`, `zeros`: fp32 [out, G], a scale and a zero point (in code units)
  per output row and group of input columns;
- `groups`: int32 [in], each input column's group (runs of a group size, or
  act-order's shuffled assignment);
so that W[o, i] = (code[o, i] - zeros[o, groups[i]]) * scales[o, groups[i]],
computed in fp32 and rounded once to the activations' dtype, as the
checkpoint readers (engine/int_checkpoint.py) dequantize. Fused projections
(q/k/v, gate/up) stack their parts' rows, so each part must share `groups`.
Reference: `dequantize`, then `F.linear`; kernels/triton_int_linear.py is the
Triton GEMM that decodes codes as it reads them. A mixture of experts' stacks
(`IntExperts`) hold the same per expert, for kernels/triton_experts.py's
grouped GEMM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Past this many input rows the Triton launcher dequantizes the matrix into a scratch
# copy for cuBLAS instead (kernels/triton_int_linear.py), as the FP8 one does.
INT_GEMM_MAX_ROWS = 256
_WORK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class PackedInt:
    """One matrix's packed codes and how to read them (see above)."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    groups: torch.Tensor
    bits: int
    # Input columns per group when the groups are plain runs of that size (the last one
    # cut short), so a GEMM tile within one run reads its scales once; 0: any other
    # assignment (act-order's), read column by column.
    group_size: int = 0

    @property
    def in_features(self) -> int:
        return self.groups.shape[0]


@dataclass(frozen=True)
class IntExperts:
    """A stack of expert matrices [E, N, K] as packed integers: each expert's PackedInt
    stacked (codes [E, N, words], scales and zeros [E, N, G], groups [E, K]: act-order
    gives each expert its own); `group_size` as PackedInt's, shared by every expert."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    groups: torch.Tensor
    bits: int
    group_size: int = 0

    @property
    def shape(self) -> tuple[int, int, int]:
        experts, rows, _ = self.codes.shape
        return experts, rows, self.groups.shape[1]

    def matrix(self, index: int) -> PackedInt:
        """One expert's matrix, packed."""
        return PackedInt(
            self.codes[index],
            self.scales[index],
            self.zeros[index],
            self.groups[index],
            self.bits,
            self.group_size,
        )

    def expert(self, index: int, dtype: torch.dtype) -> torch.Tensor:
        """One matrix, dequantized: [N, K] in `dtype`."""
        return dequantize(self.matrix(index), dtype)


def empty_packed(
    shape: tuple[int, ...], bits: int, group_count: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uninitialised codes, scales, zeros and groups of packed matrices (`shape`: [...,
    out, in]; int32 [..., out, words], fp32 [..., out, group_count] twice, int32 [...,
    in]), for a checkpoint's to be loaded into."""
    *leading, rows, cols = shape
    codes = torch.empty(*leading, rows, words_per_row(cols, bits), dtype=torch.int32, device=device)
    scales, zeros = (
        torch.empty(*leading, rows, group_count, dtype=torch.float32, device=device)
        for _ in range(2)
    )
    groups = torch.empty(*leading, cols, dtype=torch.int32, device=device)
    return codes, scales, zeros, groups


def run_length(groups: torch.Tensor) -> int:
    """The size of the runs `groups` numbers its columns in (0, 0, ..., 1, 1, ...),
    0 when it is not plain runs (act-order)."""
    if groups.numel() == 0 or int(groups[0]) != 0:
        return 0
    size = int((groups == 0).sum())
    runs = torch.arange(groups.numel(), device=groups.device) // size
    return size if torch.equal(groups.to(runs.dtype), runs) else 0


def words_per_row(in_features: int, bits: int) -> int:
    """int32 words holding a row of `in_features` codes."""
    return -(-in_features // (32 // bits))


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned codes [out, in] -> int32 [out, words_per_row(in, bits)] (see above), a few
    rows at a time (the int64 work stays small however large the matrix)."""
    per_word = 32 // bits
    out_features, in_features = codes.shape
    width = words_per_row(in_features, bits)
    words = torch.empty(out_features, width, dtype=torch.int32, device=codes.device)
    shifts = torch.arange(0, 32, bits, dtype=torch.int64, device=codes.device)
    for rows in _row_chunks(out_features, width * per_word):
        padded = torch.zeros(
            codes[rows].shape[0], width * per_word, dtype=torch.int64, device=codes.device
        )
        padded[:, :in_features] = codes[rows]
        summed = (padded.view(padded.shape[0], width, per_word) << shifts).sum(-1)
        words[rows] = torch.where(summed >= 1 << 31, summed - (1 << 32), summed)
    return words


def unpack_codes(codes: torch.Tensor, bits: int, in_features: int) -> torch.Tensor:
    """int32 [out, words] -> unsigned codes int32 [out, in_features]."""
    shifts = torch.arange(0, 32, bits, dtype=torch.int32, device=codes.device)
    unpacked = (codes.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return unpacked.reshape(codes.shape[0], -1)[:, :in_features]


def dequantize(weight: PackedInt, dtype: torch.dtype) -> torch.Tensor:
    """The whole matrix [out, in] in `dtype`: (code - zero) * scale per group in fp32,
    rounded once; a few rows at a time, so the work beside the result stays ~64 MB
    however large the matrix (a quantized LM head is a billion weights)."""
    out_features, in_features = weight.codes.shape[0], weight.in_features
    index = weight.groups.long()
    scales, zeros = weight.scales.to(torch.float32), weight.zeros.to(torch.float32)
    out = torch.empty(out_features, in_features, dtype=dtype, device=weight.codes.device)
    for rows in _row_chunks(out_features, in_features):
        codes = unpack_codes(weight.codes[rows], weight.bits, in_features)
        values = codes.to(torch.float32) - zeros[rows][:, index]
        out[rows] = values.mul_(scales[rows][:, index]).to(dtype)
    return out


def _row_chunks(rows: int, width: int) -> list[slice]:
    """Runs of rows holding about _WORK_ELEMENTS values of `width` each."""
    step = max(1, _WORK_ELEMENTS // max(1, width))
    return [slice(start, start + step) for start in range(0, rows, step)]
