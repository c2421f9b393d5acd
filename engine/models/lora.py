"""LoRA adapters applied per row of a flattened batch: many adapters (and none) in one step.

Each fused projection (qkv, gate_up, ...) keeps every adapter's A matrices
stacked as one [slots, subs * rank, in] tensor and its B matrices as
[slots, out, rank], ranks zero-padded to the largest loaded (exact: padded rows
add nothing). A step's rows are grouped by adapter once (`LoRAContext`, set by
the runner and shared by every layer); each projection then adds, per group,
(x[rows] @ A.T) @ B.T to the base output for the sub-projections that adapter
trained. Rows of the base model belong to no group and cost nothing.

Grouping by adapter (not gathering a weight per row) keeps the extra work at
two thin matmuls per adapter present, which on a CPU is what LoRA should cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from engine.lora_adapter import LoRAAdapter

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class LoRAGroup:
    """The rows of this step that one adapter serves (None: every row)."""

    slot: int
    rows: torch.Tensor | None


@dataclass
class LoRAContext:
    """This step's adapter groups, read by every LoRA layer of the model."""

    groups: tuple[LoRAGroup, ...] = ()

    def set_rows(self, row_slots: list[tuple[int | None, int]], device: torch.device) -> None:
        """From (adapter slot or None, row count) per sequence in row order."""
        spans: dict[int, list[tuple[int, int]]] = {}
        start = 0
        for slot, count in row_slots:
            if slot is not None and count:
                spans.setdefault(slot, []).append((start, start + count))
            start += count
        groups = []
        for slot, ranges in spans.items():
            if ranges == [(0, start)]:
                groups.append(LoRAGroup(slot, None))
                continue
            rows = torch.cat([torch.arange(a, b) for a, b in ranges])
            groups.append(LoRAGroup(slot, rows.to(device, non_blocking=True)))
        self.groups = tuple(groups)

    def clear(self) -> None:
        self.groups = ()


@dataclass
class LoRALayer:
    """Every adapter's update of one fused projection, made of `subs` (name, out size)."""

    subs: tuple[tuple[str, int], ...]
    a: torch.Tensor  # [slots, len(subs) * rank, in]
    b: torch.Tensor  # [slots, out, rank]
    context: LoRAContext
    # Per slot, the sub-projections its adapter trained (the others stay zero).
    trained: list[list[int]] = field(default_factory=list)

    @property
    def rank(self) -> int:
        return self.b.shape[2]

    def add_to(self, out: torch.Tensor, x: torch.Tensor) -> None:
        """out += every group's LoRA update of its rows (in place)."""
        rank = self.rank
        for group in self.context.groups:
            trained = self.trained[group.slot]
            if not trained:
                continue
            a, b = self.a[group.slot], self.b[group.slot]
            rows = x if group.rows is None else x.index_select(0, group.rows)
            shrunk = rows @ a.T
            target = out if group.rows is None else out.new_zeros(rows.shape[0], out.shape[1])
            offset = 0
            for index, (_, size) in enumerate(self.subs):
                if index in trained:
                    cols = target[:, offset : offset + size]
                    cols.addmm_(
                        shrunk[:, index * rank : (index + 1) * rank], b[offset : offset + size].T
                    )
                offset += size
            if group.rows is not None:
                out.index_add_(0, group.rows, target)


def build_lora_layer(
    subs: tuple[tuple[str, int], ...],
    in_features: int,
    layer_index: int,
    adapters: list[LoRAAdapter],
    context: LoRAContext,
    dtype: torch.dtype,
    device: torch.device,
) -> LoRALayer:
    """Stack `adapters`' updates of one fused projection (slot i is adapters[i])."""
    rank = max(adapter.rank for adapter in adapters)
    out_features = sum(size for _, size in subs)
    a = torch.zeros(len(adapters), len(subs) * rank, in_features, dtype=dtype, device=device)
    b = torch.zeros(len(adapters), out_features, rank, dtype=dtype, device=device)
    trained: list[list[int]] = []
    for slot, adapter in enumerate(adapters):
        trained.append([])
        offset = 0
        for index, (name, size) in enumerate(subs):
            update = adapter.weights.get((layer_index, name))
            if update is not None:
                r = update.rank
                a[slot, index * rank : index * rank + r] = update.a.to(dtype)
                b[slot, offset : offset + size, :r] = update.b.to(dtype)
                trained[slot].append(index)
            offset += size
    return LoRALayer(subs, a, b, context, trained)


def attach_lora(
    model: nn.Module, adapters: list[LoRAAdapter], dtype: torch.dtype, device: torch.device
) -> LoRAContext:
    """Give every projection of `model` its stacked adapter updates; returns the context
    the runner sets each step (adapter slot i is adapters[i])."""
    context = LoRAContext()
    for layer_index, linear, subs in model.lora_projections():
        linear.lora = build_lora_layer(
            subs, linear.in_features, layer_index, adapters, context, dtype, device
        )
    return context
