"""Checkpoints whose weights are stored as packed integer codes: GPTQ, AWQ and
compressed-tensors' integer schemes (llm-compressor's W4A16, W8A16, W8A8-int8).

All three store a matrix as small unsigned codes, one scale per group of input
columns (or per output channel), and zero points, such that
weight = (code - zero) * scale; they differ in where the codes are packed and
how zeros are written:

- GPTQ (AutoGPTQ, GPTQModel): `qweight` int32 [in * bits / 32, out], codes
  packed down the input dimension, the lowest bits first; `qzeros` int32
  [groups, out * bits / 32], packed across the output one; `scales` [groups,
  out]; `g_idx` [in], each input column's group (act-order permutes them).
  The original format ("gptq") stores each zero less one; "gptq_v2" does not.
- AWQ (AutoAWQ's GEMM layout): `qweight` int32 [in, out / 8] and `qzeros`
  [groups, out / 8], packed across the output dimension in AWQ's interleaved
  order (a word's nibble i holds column 8c + AWQ_ORDER[i]); `scales` [groups,
  out].
- compressed-tensors: `weight_packed` int32 [out, in * bits / 32] packed
  along the input dimension (or, int-quantized, `weight` int8 [out, in]),
  codes stored offset by 2^(bits-1) so they are signed once read; `weight_scale`
  [out, groups] (one per channel: [out, 1]; per tensor: one); asymmetric
  schemes add `weight_zero_point` [out, groups] (packed down the output
  dimension when the codes are packed); act-order adds `weight_g_idx`.

The engine dequantizes each matrix once as it loads, in fp32 and rounded once
into the model's dtype, and hands the model the plain `<layer>.weight`
([out, in]): the release's numbers at the model dtype's memory (the torch path
computes in it anyway; no integer GEMM kernel is used yet). Which format a
checkpoint uses is read in engine/weight_quantization.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from engine.weight_quantization import IntWeights

# A GPTQ/AWQ layer's tensors beside its packed codes, and compressed-tensors'.
GPTQ_PARTS = (".qzeros", ".scales", ".g_idx")
COMPRESSED_TENSORS_PARTS = (".weight_scale", ".weight_zero_point", ".weight_g_idx", ".weight_shape")
# AWQ packs columns 0, 2, 4, 6, 1, 3, 5, 7 of each group of eight into a word's
# nibbles 0..7; reading nibble AWQ_UNPACK_ORDER[k] gives column k.
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_UNPACK_ORDER = tuple(AWQ_ORDER.index(column) for column in range(8))
# Activation scales and observers' leftovers beside compressed-tensors' weights, which
# the engine leaves aside (it computes in the model's dtype).
_IGNORED = (".input_scale", ".input_zero_point", ".input_global_scale", ".output_scale")


def is_side_tensor(name: str, method: str) -> bool:
    """A tensor read before the codes it belongs to (small: scales, zeros, indices)."""
    parts = GPTQ_PARTS if method in ("gptq", "awq") else COMPRESSED_TENSORS_PARTS
    return name.endswith(parts)


def unpack_rows(words: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [R, C] holding 32/bits codes each, packed down the rows (the lowest bits
    first) -> int32 codes [R * 32 / bits, C], unsigned."""
    shifts = torch.arange(0, 32, bits, dtype=torch.int32).view(1, -1, 1)
    codes = (words.to(torch.int32).unsqueeze(1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(-1, words.shape[-1])


def unpack_columns(
    words: torch.Tensor, bits: int, order: tuple[int, ...] | None = None
) -> torch.Tensor:
    """int32 [R, C] packed across the columns (the lowest bits first) -> int32 codes
    [R, C * 32 / bits], unsigned; `order`: which nibble holds each column of a word
    (AWQ's interleaving), None: in order."""
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    codes = (words.to(torch.int32).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    if order is not None:
        codes = codes[..., list(order)]
    return codes.reshape(words.shape[0], -1)


def dequantize(
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    groups: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """codes [out, in] -> (code - zero) * scale in fp32, rounded once to `dtype`;
    scales and zeros [out, G] (or one of each), `groups` [in]: each input column's
    group (None: G equal runs of columns, which must divide the row)."""
    in_features = codes.shape[1]
    scales = _per_row(scales)
    zeros = None if zeros is None else _per_row(zeros)
    count = scales.shape[-1]
    if groups is None:
        size = -(-in_features // count)
        if -(-in_features // size) != count:
            raise ValueError(f"{count} groups of scales do not divide {in_features} input columns")
        groups = torch.arange(in_features) // size
    elif groups.numel() != in_features or int(groups.max()) >= count or int(groups.min()) < 0:
        raise ValueError(
            f"group indices for {in_features} input columns do not match {count} groups"
        )
    groups = groups.long()
    values = codes.to(torch.float32)
    if zeros is not None:
        values = values - zeros[:, groups]
    return (values * scales[:, groups]).to(dtype)


def _per_row(values: torch.Tensor) -> torch.Tensor:
    """Scales or zeros as [rows, groups], fp32: one for the matrix is [1, 1], one per
    output channel [out, 1]."""
    values = values.to(torch.float32)
    if values.numel() == 1:
        return values.reshape(1, 1)
    return values.reshape(values.shape[0], -1)


def dequantized_weights(
    tensors: Iterable[tuple[str, torch.Tensor]],
    side: dict[str, torch.Tensor],
    method: str,
    int_weights: IntWeights,
    dtype: torch.dtype,
) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint's tensors with each packed matrix dequantized (`side`: every
    tensor `is_side_tensor` names, by name) under its plain `<layer>.weight` name and
    [out, in] layout; the side tensors and activation scales left out."""
    for name, tensor in tensors:
        if is_side_tensor(name, method) or name.endswith(_IGNORED):
            continue
        if method in ("gptq", "awq") and name.endswith(".qweight"):
            layer = name.removesuffix(".qweight")
            read = _gptq if method == "gptq" else _awq
            yield layer + ".weight", read(layer, tensor, side, int_weights, dtype)
        elif method == "int" and name.endswith(".weight_packed"):
            layer = name.removesuffix(".weight_packed")
            yield layer + ".weight", _compressed(layer, tensor, side, int_weights, dtype)
        elif method == "int" and name.endswith(".weight") and tensor.dtype == torch.int8:
            layer = name.removesuffix(".weight")
            yield name, _compressed(layer, tensor, side, int_weights, dtype)
        else:
            yield name, tensor


def _side(side: dict[str, torch.Tensor], layer: str, part: str) -> torch.Tensor:
    tensor = side.get(layer + part)
    if tensor is None:
        raise ValueError(f"quantized weight {layer!r} has no {layer + part!r}")
    return tensor


def _gptq(
    layer: str,
    qweight: torch.Tensor,
    side: dict[str, torch.Tensor],
    int_weights: IntWeights,
    dtype: torch.dtype,
) -> torch.Tensor:
    bits = int_weights.bits
    codes = unpack_rows(qweight, bits)  # [in, out]
    zeros = unpack_columns(_side(side, layer, ".qzeros"), bits) + int_weights.zero_offset
    scales = _side(side, layer, ".scales")
    out_features = scales.shape[-1]
    groups = side.get(layer + ".g_idx")
    if groups is None:
        groups = _runs(codes.shape[0], int_weights.group_size)
    return dequantize(
        codes.t(), scales.t(), zeros[:, :out_features].t(), groups, dtype
    ).contiguous()


def _awq(
    layer: str,
    qweight: torch.Tensor,
    side: dict[str, torch.Tensor],
    int_weights: IntWeights,
    dtype: torch.dtype,
) -> torch.Tensor:
    bits = int_weights.bits
    codes = unpack_columns(qweight, bits, AWQ_UNPACK_ORDER)  # [in, out]
    zeros = unpack_columns(_side(side, layer, ".qzeros"), bits, AWQ_UNPACK_ORDER)
    scales = _side(side, layer, ".scales")
    groups = _runs(codes.shape[0], int_weights.group_size)
    return dequantize(codes.t(), scales.t(), zeros.t(), groups, dtype).contiguous()


def _compressed(
    layer: str,
    stored: torch.Tensor,
    side: dict[str, torch.Tensor],
    int_weights: IntWeights,
    dtype: torch.dtype,
) -> torch.Tensor:
    bits = int_weights.bits
    offset = 1 << (bits - 1)
    scales = _side(side, layer, ".weight_scale")
    if stored.dtype == torch.int8:  # int-quantized: one signed code a byte
        codes = stored.to(torch.int32)
    else:
        out_features, in_features = (int(n) for n in _side(side, layer, ".weight_shape"))
        codes = unpack_columns(stored, bits)[:, :in_features] - offset
        if codes.shape[0] != out_features:
            raise ValueError(f"{layer!r}: packed rows do not match its weight_shape")
    zeros = side.get(layer + ".weight_zero_point")
    if zeros is not None and zeros.dtype == torch.int32 and stored.dtype != torch.int8:
        # Packed down the output dimension, offset as the codes are.
        zeros = unpack_rows(zeros, bits)[: codes.shape[0]] - offset
    groups = side.get(layer + ".weight_g_idx")
    if groups is None and int_weights.group_size is not None and scales.dim() == 2:
        # A group strategy's matrix (not another scheme's per-channel one).
        groups = _runs(codes.shape[1], int_weights.group_size) if scales.shape[-1] > 1 else None
    return dequantize(codes, scales, zeros, groups, dtype)


def _runs(in_features: int, group_size: int | None) -> torch.Tensor | None:
    """Each input column's group when groups are runs of `group_size` columns (the last
    one cut short); None: read from the scales' shape."""
    return None if group_size is None else torch.arange(in_features) // group_size
