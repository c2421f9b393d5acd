"""Which of a model's linear layers (and expert stacks) keep a packed-integer
checkpoint's codes packed.

Where the backend multiplies packed integers itself (`FusedOps.int_linear`:
Triton), a GPTQ, AWQ or compressed-tensors integer checkpoint's projections
stay packed in memory (kernels/packed_int.py: a 4-bit weight in half a byte,
plus a scale and zero per group) instead of being dequantized as they load.
It is decided on the meta-device model, before its tensors are allocated,
from the checkpoint's quantized layers and their side tensors (scales, group
indices: read first, they are small). A projection the engine fuses (q/k/v,
gate/up) stays packed when every part is packed with the same groups of
input columns (act-order may give each part its own); anything else (a part
left in full precision, parts whose groups differ, the LM head) is dequantized
as it loads, as on the torch path. Query/key rows reordered as they load
(engine/interleaved_rope.py) take their scales' and zeros' rows along. A
mixture of experts' stacks stay packed where the backend's experts op reads
packed integers (`FusedOps.experts_int`: the Triton grouped GEMM) and every
expert's three matrices are packed, each stack's matrices with as many groups,
and each expert's gate and up with the same groups; each expert keeps its own
groups (act-order shuffles them per matrix).
"""

from __future__ import annotations

import torch
from torch import nn

from engine.int_checkpoint import group_count, layer_groups
from engine.models.linear import FUSED_PARTS, NOT_CALLED, Linear
from engine.models.moe import SparseMoE, checkpoint_expert_layers
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
    packed, and each kept module's input-column groups by its buffer's name, to set
    once the model's memory is allocated (`set_groups`)."""
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
        groups_of[f"{qualified}.weight_groups"] = found[0]
    return frozenset(kept), groups_of


def keep_int_experts(
    model: nn.Module,
    layers: set[str],
    side: dict[str, torch.Tensor],
    method: str,
    int_weights: IntWeights,
) -> tuple[frozenset[str], dict[str, torch.Tensor]]:
    """Turn the mixture-of-experts layers whose every expert matrix is packed (see
    above) into packed stacks; returns those matrices' checkpoint layers and each
    stack's groups ([experts, in]) by buffer name, as keep_int_linears does."""
    layer_of = {layer + ".weight": layer for layer in layers}
    kept: set[str] = set()
    groups_of: dict[str, torch.Tensor] = {}
    for index, moe, weights in checkpoint_expert_layers(model, layer_of):
        found = {part: layer_of[name] for part, name in weights.items()}
        stacks = _expert_stacks(moe, found, side, method, int_weights)
        if stacks is None:
            continue
        # A run of columns per group that every expert of the stack shares, else 0.
        runs = [{run_length(groups) for groups in stack_groups} for stack_groups, _ in stacks]
        sizes = [run.pop() if len(run) == 1 else 0 for run in runs]
        moe.keep_int(int_weights.bits, (stacks[0][1], stacks[1][1]), (sizes[0], sizes[1]))
        kept.update(found.values())
        for name, (stack_groups, _) in zip(("gate_up", "down"), stacks, strict=True):
            groups_of[f"layers.{index}.mlp.{name}_groups"] = stack_groups
    return frozenset(kept), groups_of


def _expert_stacks(
    moe: SparseMoE,
    found: dict[tuple[int, str], str],
    side: dict[str, torch.Tensor],
    method: str,
    int_weights: IntWeights,
) -> tuple[tuple[torch.Tensor, int], tuple[torch.Tensor, int]] | None:
    """Each stack's groups [experts, in] and group count, or None where the matrices
    cannot share one stack (gate and up grouped apart, or group counts that differ)."""
    hidden, inter = moe.gate.shape[1], moe.inter
    gate_up: list[torch.Tensor] = []
    down: list[torch.Tensor] = []
    counts: tuple[set[int], set[int]] = (set(), set())
    for expert in range(moe.gate.shape[0]):
        gate, up = (found[(expert, part)] for part in ("gate", "up"))
        gate_groups = layer_groups(gate, side, method, int_weights, hidden)
        if not torch.equal(gate_groups, layer_groups(up, side, method, int_weights, hidden)):
            return None
        gate_up.append(gate_groups)
        down.append(layer_groups(found[(expert, "down")], side, method, int_weights, inter))
        counts[0].update(group_count(layer, side, method) for layer in (gate, up))
        counts[1].add(group_count(found[(expert, "down")], side, method))
    if len(counts[0]) != 1 or len(counts[1]) != 1:
        return None
    return (torch.stack(gate_up), counts[0].pop()), (torch.stack(down), counts[1].pop())


def set_groups(model: nn.Module, groups_of: dict[str, torch.Tensor]) -> None:
    """Fill the kept layers' and stacks' column groups, once the model's memory is
    allocated."""
    for name, groups in groups_of.items():
        model.get_buffer(name).copy_(groups)
