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

Each matrix is first read into one form, kernels/packed_int.py's `PackedInt`
(unsigned codes packed along the inputs, and a scale and zero point per row and
group, in code units, whatever the format's own offsets): GPTQ's `qweight`
transposed and compressed-tensors' `weight_packed` already are its words;
AWQ's and int8 codes are repacked. Where the backend multiplies packed
integers itself (Triton: `FusedOps.int_linear`), the layers
engine/int_linears.py chose are handed over in that form (`weight`,
`weight_scale`, `weight_zero`): a 4-bit weight in groups of 128 takes ~0.56
bytes, 28% of bf16's. Elsewhere (the torch path, the LM head, MoE experts,
fused parts whose groups differ) the matrix is dequantized once as it loads,
in fp32 and rounded once into the model's dtype, and handed on as the plain
`<layer>.weight` [out, in]: the release's numbers at the model dtype's memory.
Which format a checkpoint uses is read in engine/weight_quantization.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from engine.weight_quantization import IntWeights
from kernels.packed_int import PackedInt, dequantize, pack_codes, run_length

# The tensors beside a layer's packed codes, by method (GPTQ's and AWQ's are named alike).
SIDE_TENSORS = {
    "gptq": (".qzeros", ".scales", ".g_idx"),
    "awq": (".qzeros", ".scales", ".g_idx"),
    "int": (".weight_scale", ".weight_zero_point", ".weight_g_idx", ".weight_shape"),
}
# AWQ packs columns 0, 2, 4, 6, 1, 3, 5, 7 of each group of eight into a word's
# nibbles 0..7; reading nibble AWQ_UNPACK_ORDER[k] gives column k.
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_UNPACK_ORDER = tuple(AWQ_ORDER.index(column) for column in range(8))
# Activation scales beside compressed-tensors' weights (W8A8's), which the engine leaves
# aside (it computes in the model's dtype).
_ACTIVATION_SCALES = (".input_scale", ".input_zero_point", ".input_global_scale", ".output_scale")


def is_side_tensor(name: str, method: str) -> bool:
    """A tensor read before the codes it belongs to (small: scales, zeros, indices)."""
    return name.endswith(SIDE_TENSORS[method])


def packed_layer(name: str, int8: bool, method: str) -> str | None:
    """The layer whose codes the tensor `name` holds (`int8`: stored as int8), None for
    any other tensor."""
    if method in ("gptq", "awq") and name.endswith(".qweight"):
        return name.removesuffix(".qweight")
    if method == "int" and name.endswith(".weight_packed"):
        return name.removesuffix(".weight_packed")
    if method == "int" and int8 and name.endswith(".weight"):
        return name.removesuffix(".weight")
    return None


def packed_layers(dtypes: dict[str, str], method: str) -> set[str]:
    """The checkpoint's quantized layers, from its tensors' safetensors dtypes
    (engine/fp8_linears.py's checkpoint_dtypes)."""
    found = (packed_layer(name, dtype == "I8", method) for name, dtype in dtypes.items())
    return {layer for layer in found if layer is not None}


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


def group_count(layer: str, side: dict[str, torch.Tensor], method: str) -> int:
    """How many groups of input columns the layer's scales have."""
    scales = _side(side, layer, ".weight_scale" if method == "int" else ".scales")
    if method in ("gptq", "awq"):
        return scales.shape[0]  # [G, out]
    return scales.shape[-1] if scales.dim() == 2 else 1  # [out, G], [out, 1] or one


def layer_groups(
    layer: str,
    side: dict[str, torch.Tensor],
    method: str,
    int_weights: IntWeights,
    in_features: int,
) -> torch.Tensor:
    """Each input column's group (int32 [in]), each below the scales' count:
    act-order's stored indices, else runs of the configured group size whose count the
    scales have (the last run cut short; with several sizes configured, the one that
    fits), else one group a row."""
    count = group_count(layer, side, method)
    stored = side.get(layer + (".weight_g_idx" if method == "int" else ".g_idx"))
    if stored is not None:
        if stored.numel() != in_features or int(stored.min()) < 0 or int(stored.max()) >= count:
            raise ValueError(
                f"{layer!r}: its {stored.numel()} group indices do not number {in_features} "
                f"inputs' groups among its {count} groups of scales"
            )
        return stored.to(torch.int32)
    if count == 1:
        return torch.zeros(in_features, dtype=torch.int32)
    fits = [size for size in int_weights.group_sizes if -(-in_features // size) == count]
    if len(fits) != 1:
        raise ValueError(
            f"{layer!r}: {count} groups of scales for {in_features} inputs match "
            f"{'none' if not fits else 'more than one'} of the configured group sizes "
            f"{list(int_weights.group_sizes)}"
        )
    return (torch.arange(in_features) // fits[0]).to(torch.int32)


def read_matrix(
    layer: str,
    stored: torch.Tensor,
    side: dict[str, torch.Tensor],
    method: str,
    int_weights: IntWeights,
) -> PackedInt:
    """A layer's codes (`stored`: its qweight, weight_packed or int8 weight) with their
    scales, zeros and groups, in kernels/packed_int.py's form."""
    if stored.dtype not in (torch.int32, torch.int8) or (
        stored.dtype == torch.int8 and method != "int"
    ):
        raise ValueError(f"{layer!r}: packed codes of dtype {stored.dtype} are not supported")
    reader = {"gptq": _gptq, "awq": _awq, "int": _compressed}[method]
    return reader(layer, stored, side, int_weights)


def model_weights(
    tensors: Iterable[tuple[str, torch.Tensor]],
    side: dict[str, torch.Tensor],
    method: str,
    int_weights: IntWeights,
    dtype: torch.dtype,
    keep: frozenset[str] = frozenset(),
) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint's tensors as the model loads them (`side`: every tensor
    `is_side_tensor` names, by name): each packed matrix dequantized under its plain
    `<layer>.weight` name and [out, in] layout, but the layers named in `keep` packed
    as kernels/packed_int.py holds them (`weight`, `weight_scale`, `weight_zero`); the
    side tensors and activation scales left out."""
    for name, tensor in tensors:
        if is_side_tensor(name, method) or (method == "int" and name.endswith(_ACTIVATION_SCALES)):
            continue
        layer = packed_layer(name, tensor.dtype == torch.int8, method)
        if layer is None:
            yield name, tensor
            continue
        matrix = read_matrix(layer, tensor, side, method, int_weights)
        if layer in keep:
            yield layer + ".weight", matrix.codes
            yield layer + ".weight_scale", matrix.scales
            yield layer + ".weight_zero", matrix.zeros
        else:
            yield layer + ".weight", dequantize(matrix, dtype)


def _side(side: dict[str, torch.Tensor], layer: str, part: str) -> torch.Tensor:
    tensor = side.get(layer + part)
    if tensor is None:
        raise ValueError(f"quantized weight {layer!r} has no {layer + part!r}")
    return tensor


def _gptq(
    layer: str, qweight: torch.Tensor, side: dict[str, torch.Tensor], int_weights: IntWeights
) -> PackedInt:
    """qweight [in * bits / 32, out] transposed is the packed form's words as they are."""
    bits = int_weights.bits
    scales = _side(side, layer, ".scales").to(torch.float32)  # [G, out]
    out_features = scales.shape[1]
    indices = side.get(layer + ".g_idx")
    in_features = indices.numel() if indices is not None else qweight.shape[0] * 32 // bits
    qzeros = _side(side, layer, ".qzeros")
    _expect(layer, "qweight", qweight, (-(-in_features * bits // 32), out_features))
    _expect(layer, "qzeros", qzeros, (scales.shape[0], -(-out_features * bits // 32)))
    zeros = unpack_columns(qzeros, bits)[:, :out_features] + int_weights.zero_offset
    groups = layer_groups(layer, side, "gptq", int_weights, in_features)
    return _packed(qweight.t(), scales.t(), zeros.t(), groups, bits)  # scales, zeros [G, out]


def _awq(
    layer: str, qweight: torch.Tensor, side: dict[str, torch.Tensor], int_weights: IntWeights
) -> PackedInt:
    bits = int_weights.bits
    scales = _side(side, layer, ".scales").to(torch.float32)  # [G, out]
    qzeros = _side(side, layer, ".qzeros")
    words = scales.shape[1] * bits // 32
    _expect(layer, "qweight", qweight, (qweight.shape[0], words))
    _expect(layer, "qzeros", qzeros, (scales.shape[0], words))
    codes = unpack_columns(qweight, bits, AWQ_UNPACK_ORDER)  # [in, out]
    zeros = unpack_columns(qzeros, bits, AWQ_UNPACK_ORDER)
    groups = layer_groups(layer, side, "awq", int_weights, codes.shape[0])
    return _packed(pack_codes(codes.t(), bits), scales.t(), zeros.t(), groups, bits)


def _compressed(
    layer: str, stored: torch.Tensor, side: dict[str, torch.Tensor], int_weights: IntWeights
) -> PackedInt:
    """compressed-tensors stores code + 2^(bits-1) (a signed code made unsigned) and, if
    asymmetric, zero + 2^(bits-1) the same way when packed: read as they are, the
    unsigned codes less the unsigned zeros are the signed ones' difference; its
    `weight_packed` words are the packed form's as they are."""
    bits = int_weights.bits
    offset = 1 << (bits - 1)
    if stored.dtype == torch.int8:  # int-quantized: one signed code a byte
        out_features, in_features = stored.shape
        words = pack_codes(stored.to(torch.int32) + offset, bits)
    else:
        shape = _side(side, layer, ".weight_shape")
        if shape.numel() != 2:
            raise ValueError(
                f"{layer!r}: weight_shape {shape.tolist()} is not a matrix's (stacked "
                "experts' packed weights are not supported)"
            )
        out_features, in_features = (int(n) for n in shape)
        _expect(layer, "weight_packed", stored, (out_features, -(-in_features * bits // 32)))
        words = stored.contiguous()
    scales = _per_row(_side(side, layer, ".weight_scale"), out_features)
    stored_zeros = side.get(layer + ".weight_zero_point")
    if stored_zeros is None:
        zeros = torch.full_like(scales, float(offset))
    elif stored_zeros.dtype == torch.int32 and stored.dtype != torch.int8:
        # Packed down the output dimension, offset as the codes are.
        zeros = unpack_rows(stored_zeros, bits)[:out_features].to(torch.float32)
        _expect(layer, "weight_zero_point (unpacked)", zeros, tuple(scales.shape))
    else:  # one signed int8 zero each
        zeros = _per_row(stored_zeros, out_features) + offset
    groups = layer_groups(layer, side, "int", int_weights, in_features)
    return _packed(words, scales, zeros, groups, bits)


def _packed(
    words: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    groups: torch.Tensor,
    bits: int,
) -> PackedInt:
    """The packed form of one matrix (words [out, words]; scales, zeros [out, G]), laid out
    contiguous in fp32 and told whether its groups are plain runs."""
    return PackedInt(
        words.contiguous(),
        scales.to(torch.float32).contiguous(),
        zeros.to(torch.float32).contiguous(),
        groups,
        bits,
        run_length(groups),
    )


def _per_row(values: torch.Tensor, out_features: int) -> torch.Tensor:
    """compressed-tensors' scales or zeros, one per matrix ([1] or a scalar), per channel
    ([out, 1]) or per group ([out, G]), as fp32 [out, G]."""
    values = values.to(torch.float32)
    rows = values.reshape(1, 1) if values.numel() == 1 else values.reshape(values.shape[0], -1)
    if rows.shape[0] not in (1, out_features):
        raise ValueError(f"{tuple(values.shape)} scales or zeros for {out_features} output rows")
    return rows.expand(out_features, -1).contiguous()


def _expect(layer: str, part: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    """A packed tensor's shape, as the scales and the configured width make it: a wrong
    `bits` or group layout is an error, not a model of garbage weights."""
    if tuple(tensor.shape) != shape:
        raise ValueError(
            f"{layer!r}: {part} is {tuple(tensor.shape)}, expected {shape} for the "
            "configured bits and the layer's scales"
        )
