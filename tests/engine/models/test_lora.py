"""LoRA layers against the plain per-row formula, for every way rows can be grouped."""

from __future__ import annotations

import torch

from engine.lora_adapter import LoRAAdapter, LoRAWeights
from engine.models.lora import LoRAContext, LoRALayer, slot_weights

SUBS = (("q_proj", 6), ("k_proj", 2), ("v_proj", 2))


def adapter(name: str, ranks: dict[str, int], seed: int) -> LoRAAdapter:
    gen = torch.Generator().manual_seed(seed)
    weights = {
        (0, sub): LoRAWeights(torch.randn(r, 5, generator=gen), torch.randn(size, r, generator=gen))
        for sub, size in SUBS
        if (r := ranks.get(sub))
    }
    return LoRAAdapter(name, name, weights)


def reference(x: torch.Tensor, slots: list[int | None], adapters: list[LoRAAdapter]):
    """Row by row: the sum of each trained sub-projection's x @ A.T @ B.T, in its columns."""
    rows = []
    for row, slot in zip(x, slots, strict=True):
        parts = []
        for sub, size in SUBS:
            update = None if slot is None else adapters[slot].weights.get((0, sub))
            parts.append(torch.zeros(size) if update is None else row @ update.a.T @ update.b.T)
        rows.append(torch.cat(parts))
    return torch.stack(rows)


def test_runs_merge_neighbours_of_one_adapter() -> None:
    context = LoRAContext()
    context.set_rows([(None, 1), (0, 1), (0, 1), (1, 0), (0, 3), (None, 2), (1, 4)])
    assert [(r.slot, r.start, r.end) for r in context.runs] == [(0, 1, 6), (1, 8, 12)]


def test_grouped_rows_get_their_own_adapters_update() -> None:
    adapters = [
        adapter("a", {"q_proj": 3, "k_proj": 1, "v_proj": 2}, 1),
        adapter("b", {"v_proj": 4}, 2),  # the widest rank, on one part only
        adapter("c", {}, 3),  # trains none of these projections
    ]
    context = LoRAContext()
    layer = LoRALayer([], [], context, [])
    for slot, each in enumerate(adapters):  # as LoRAManager.add fills a slot
        layer.set_slot(slot, *slot_weights(SUBS, 5, 0, each, torch.float32, torch.device("cpu")))
    # As wide as the ranks each adapter trained here: no padding to the widest.
    assert [a.shape for a in layer.a] == [(5, 6), (5, 4), (5, 0)]
    assert [b.shape for b in layer.b] == [(6, 10), (4, 10), (0, 10)]
    assert layer.trained == [True, True, False]
    x = torch.randn(9, 5)
    cases = [
        [(0, 9)],  # one adapter, every row: no gather
        [(None, 2), (0, 3), (1, 1), (0, 2), (None, 1)],
        [(1, 4), (2, 5)],
        [(None, 9)],
    ]
    for spans in cases:
        context.set_rows(spans)
        slots = [slot for slot, count in spans for _ in range(count)]
        base = torch.randn(9, 10)
        out = base.clone()
        layer.add_to(out, x)
        torch.testing.assert_close(out - base, reference(x, slots, adapters), msg=str(spans))
    context.set_rows([])
    out = base.clone()
    layer.add_to(out, x)
    assert torch.equal(out, base)
