"""LoRA adapters applied per row of a flattened batch: many adapters (and none) in one step.

Each fused projection (qkv, gate_up, ...) keeps, per adapter, the A matrices
of the parts it trained side by side, transposed, as one [in, sum of ranks]
tensor, and their B matrices as one block-diagonal [sum of ranks, out] tensor
(each part's B in its own rows and its own output columns; exact, since the
off-diagonal blocks are zeros). So an adapter's update of a run of rows is two
matmuls whatever the fusion: `out[rows] += (x[rows] @ A) @ B`.

The runner orders a step's rows by adapter (decodes first, then the rest, each
sorted), so every adapter's rows are at most two contiguous runs; the runs are
found once per step (`LoRAContext`, shared by every layer) and each projection
updates them in place through views: no gather, no scatter, and nothing at all
for rows of the base model. Per-op dispatch is what LoRA costs on a CPU, so
the op count per projection (2 per run) is what this layout minimises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from engine.lora_adapter import LoRAAdapter

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class LoRARun:
    """Rows [start, end) of this step, all served by adapter `slot`."""

    slot: int
    start: int
    end: int


@dataclass
class LoRAContext:
    """This step's runs of adapter rows, read by every LoRA layer of the model."""

    runs: tuple[LoRARun, ...] = ()

    def set_rows(self, row_slots: list[tuple[int | None, int]]) -> None:
        """From (adapter slot or None, row count) per sequence in row order; neighbours of
        one adapter merge into one run."""
        runs: list[LoRARun] = []
        start = 0
        for slot, count in row_slots:
            end = start + count
            if slot is not None and count:
                if runs and runs[-1].slot == slot and runs[-1].end == start:
                    runs[-1] = LoRARun(slot, runs[-1].start, end)
                else:
                    runs.append(LoRARun(slot, start, end))
            start = end
        self.runs = tuple(runs)


@dataclass
class LoRALayer:
    """Every adapter's update of one fused projection (built by `slot_weights`)."""

    # Per slot, one tensor each (indexing a stacked tensor per call costs as much as the
    # matmul at decode sizes); a slot's width is the sum of the ranks it trained here.
    a: list[torch.Tensor]  # [in, width]
    b: list[torch.Tensor]  # [width, out], block-diagonal over the trained subs
    context: LoRAContext
    # Per slot, whether its adapter trained any part of this projection.
    trained: list[bool]

    def set_slot(self, slot: int, a: torch.Tensor, b: torch.Tensor) -> None:
        """Put an adapter's (A, B) in `slot` (a new slot is the next one); an empty pair
        (width 0) frees it."""
        while slot >= len(self.a):  # a new slot (or, after a failed load, the one it skipped)
            self.a.append(a)
            self.b.append(b)
            self.trained.append(False)
        self.a[slot], self.b[slot] = a, b
        self.trained[slot] = a.shape[1] > 0

    def add_to(self, out: torch.Tensor, x: torch.Tensor) -> None:
        """out += each run's LoRA update of its rows (in place)."""
        num_rows = x.shape[0]
        for run in self.context.runs:
            slot = run.slot
            if not self.trained[slot]:
                continue
            if run.start == 0 and run.end == num_rows:  # one adapter on every row
                out.addmm_(x @ self.a[slot], self.b[slot])
            else:
                rows = slice(run.start, run.end)
                out[rows].addmm_(x[rows] @ self.a[slot], self.b[slot])


def slot_weights(
    subs: tuple[tuple[str, int], ...],
    in_features: int,
    layer_index: int,
    adapter: LoRAAdapter,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One adapter's (A, B) for one fused projection, as wide as the ranks of the parts
    it trained: no padding to other adapters' ranks (width 0: it trained none)."""
    out_features = sum(size for _, size in subs)
    updates = [(adapter.weights.get((layer_index, name)), size) for name, size in subs]
    width = sum(update.rank for update, _ in updates if update is not None)
    a = torch.zeros(in_features, width, dtype=dtype, device=device)
    b = torch.zeros(width, out_features, dtype=dtype, device=device)
    first = offset = 0
    for update, size in updates:
        if update is not None:
            a[:, first : first + update.rank] = update.a.T.to(dtype)
            b[first : first + update.rank, offset : offset + size] = update.b.T.to(dtype)
            first += update.rank
        offset += size
    return a, b


def attach_lora(model: nn.Module) -> LoRAContext:
    """Give every projection of `model` a LoRA layer with no adapters yet (slots are set
    as adapters load); returns the context the runner sets each step."""
    context = LoRAContext()
    for _, linear, _ in model.lora_projections():
        linear.lora = LoRALayer([], [], context, [])
    return context
