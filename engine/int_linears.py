"""Which of a model's linear layers keep a packed-integer checkpoint's codes packed.

Where the backend multiplies packed integers itself (`FusedOps.int_linear`:
Triton), a GPTQ, AWQ or compressed-tensors integer checkpoint's projections
stay packed in memory (kernels/packed_int.py: a 4-bit weight in half a byte,
plus a scale and zero per group) instead of being dequantized as they load.
It is decided on the meta-device model, before its tensors are allocated,
from the checkpoint's quantized layers and their side tensors (scales, group
indices: read first, they are small). A projection the engine fuses (q/k/v,
gate/up) stays packed when every part is packed with the same groups of
input columns (act-order may give each part its own); anything else (a part
left in full precision, parts whose groups differ, the LM head, a mixture of
experts' stacks) is dequantized as it loads, as on the torch path. Query/key
rows reordered as they load (engine/interleaved_rope.py) take their scales'
and zeros' rows along.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.int_checkpoint import group_count, layer_groups
from engine.models.linear import FUSED_PARTS, NOT_CALLED, Linear
from engine.weight_quantization import IntWeights
from kernels.fused_ops import IntLinear
from kernels.packed_int import run_length


def keep_int_linears(
    model: nn.Module,
    layers: set[str],
    side: dict[str, torch.Tensor],
    method: str,
    int_weights: IntWeights,
    int_linear: IntLinear,
) -> tuple[frozenset[str], dict[str, torch.Tensor]]:
    """Turn the model's linear layers whose checkpoint matrices are all packed (`layers`:
    the checkpoint's quantized layers, engine/int_checkpoint.py's packed_layers) into
    packed ones. Returns those checkpoint layers, which the loader then passes through
    packed, and each kept module's input-column groups by its name, to set once the
    model's memory is allocated (`set_groups`)."""
    ours: dict[str, str] = {}
    for layer in layers:
        name = model.checkpoint_name(layer + ".weight")  # type: ignore[operator]
        if name is not None:
            ours[name.removesuffix(".weight")] = layer
    kept: set[str] = set()
    groups_of: dict[str, torch.Tensor] = {}
    for qualified, module in model.named_modules():
        if not isinstance(module, Linear) or qualified in NOT_CALLED:
            continue
        prefix, _, own = qualified.rpartition(".")
        parts = [qualified] if qualified in ours else None
        if parts is None and own in FUSED_PARTS:
            parts = [f"{prefix}.{part}" for part in FUSED_PARTS[own]]
        if not parts or not all(part in ours for part in parts):
            continue
        found = [
            layer_groups(ours[part], side, method, int_weights, module.in_features)
            for part in parts
        ]
        if any(not torch.equal(groups, found[0]) for groups in found[1:]):
            continue  # act-order gave the parts different groups: dequantized instead
        counts = {group_count(ours[part], side, method) for part in parts}
        if len(counts) != 1:
            continue
        module.keep_int(int_weights.bits, counts.pop(), run_length(found[0]), int_linear)
        kept.update(ours[part] for part in parts)
        groups_of[qualified] = found[0]
    return frozenset(kept), groups_of


def set_groups(model: nn.Module, groups_of: dict[str, torch.Tensor]) -> None:
    """Fill the kept layers' `weight_groups`, once the model's memory is allocated."""
    for name, groups in groups_of.items():
        model.get_submodule(name).weight_groups.copy_(groups)
