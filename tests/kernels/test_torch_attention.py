"""The torch paged-attention backend against dense causal attention, on mixed batches."""

from __future__ import annotations

import pytest
import torch

from kernels import torch_attention
from kernels.attention import AttentionInputs
from kernels.torch_attention import (
    DECODE_GROUP,
    TorchAttentionBackend,
    TorchAttentionMetadata,
    slots_for,
)


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """q [Q, H, D] are the last Q positions of a context k/v [C, KVH, D] (not `causal`:
    each sees every position, as an encoder's do); with `window`
    a query sees only its last `window` positions (HF's sliding-window mask); with
    `softcap` scores become softcap * tanh(score / softcap) (Gemma 2's); `sinks` [H]
    add exp(sink) to each head's softmax denominator (gpt-oss's)."""
    heads, kv_heads = q.shape[1], k.shape[1]
    k = k.repeat_interleave(heads // kv_heads, dim=1)
    v = v.repeat_interleave(heads // kv_heads, dim=1)
    scores = torch.einsum("qhd,chd->hqc", q, k) * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    offset = k.shape[0] - q.shape[0]
    key_pos = torch.arange(k.shape[0])[None, :]
    query_pos = (torch.arange(q.shape[0]) + offset)[:, None]
    visible = key_pos <= query_pos if causal else torch.ones_like(key_pos <= query_pos)
    if window is not None:
        visible &= key_pos > query_pos - window
    scores = scores.masked_fill(~visible, float("-inf"))
    if sinks is None:
        return torch.einsum("hqc,chd->qhd", scores.softmax(-1), v)
    weights = scores.exp()
    denominator = weights.sum(-1, keepdim=True) + sinks.exp()[:, None, None]
    return torch.einsum("hqc,chd->qhd", weights / denominator, v)


@pytest.mark.parametrize("block_size", [1, 4, 16])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2), (8, 1)])
def test_mixed_batch_matches_dense(block_size: int, heads: int, kv_heads: int) -> None:
    torch.manual_seed(block_size * 100 + heads)
    # (cached prefix, new tokens): decodes first, then prefills with and without prefix,
    # including equal-length fresh prefills that the backend batches together.
    shapes = [(9, 1), (0, 1), (30, 1), (0, 7), (0, 7), (0, 5), (13, 6), (16, 1 + block_size)]
    check_against_dense(shapes, block_size, heads, kv_heads, num_blocks=128)


@pytest.mark.parametrize("block_size", [1, 4, 16])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2)])
def test_an_encoder_step_attends_both_ways(block_size: int, heads: int, kv_heads: int) -> None:
    """`causal` False (BERT's): each query sees every key of its sequence, later ones
    too: whole prompts (a one-token one laid out as a decode, equal lengths batched)
    and, through the masked path, a chunk after a prefix."""
    torch.manual_seed(block_size * 10 + heads)
    shapes = [(0, 1), (0, 7), (0, 7), (0, 5), (0, 1 + block_size), (13, 6)]
    check_against_dense(shapes, block_size, heads, kv_heads, num_blocks=128, causal=False)


@pytest.mark.parametrize("block_size", [1, 16])
def test_decodes_over_several_groups(block_size: int) -> None:
    """More decodes than one gather group: a group of equal lengths (attended
    without a mask), groups of mixed lengths, a short last group, then prefills."""
    torch.manual_seed(block_size)
    equal = [(20, 1)] * DECODE_GROUP
    mixed = [(int(n), 1) for n in torch.randint(0, 40, (DECODE_GROUP + 5,))]
    shapes = equal + mixed + [(0, 3), (5, 4)]
    check_against_dense(shapes, block_size, heads=6, kv_heads=2, num_blocks=2048)


@pytest.mark.parametrize("window", [1, 5, 16])
@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_sliding_window_matches_dense(window: int, block_size: int) -> None:
    """Decodes (one group with equal, one with mixed contexts, some within the window),
    fresh prefills longer and shorter than it, and prefills after a cached prefix; the
    same step's metadata also serves full-attention layers unchanged."""
    torch.manual_seed(window * 10 + block_size)
    decodes = [(30, 1)] * 3 + [(int(n), 1) for n in torch.randint(0, 40, (DECODE_GROUP + 3,))]
    shapes = [*decodes, (0, 3), (0, 23), (0, 23), (13, 6), (2, 30)]
    check_against_dense(shapes, block_size, heads=6, kv_heads=2, num_blocks=1024, window=window)


@pytest.mark.parametrize("block_size", [1, 4])
def test_a_step_where_every_layer_slides_prepares_only_windowed_metadata(
    block_size: int,
) -> None:
    """When every layer slides (their blocks behind the window may be given back), the
    step's own metadata is the windowed one: prefills gather only from their first
    query's window on, and the layers reuse it as is."""
    torch.manual_seed(block_size + 3)
    decodes = [(30, 1)] * 3 + [(int(n), 1) for n in torch.randint(0, 40, (5,))]
    shapes = [*decodes, (0, 3), (0, 23), (13, 6), (2, 30)]
    metadata = check_against_dense(
        shapes, block_size, heads=6, kv_heads=2, num_blocks=1024, window=5, every_layer=True
    )
    assert metadata.windowed == {}  # no variant was needed
    for prefill in metadata.prefills:
        if prefill.kv_slots is not None:
            q_len = prefill.end - prefill.start
            assert prefill.kv_slots.shape[0] <= q_len + 5 - 1


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("block_size", [1, 16])
def test_softcapped_scores_match_dense(window: int | None, block_size: int) -> None:
    """Gemma 2's soft-capped scores (which SDPA cannot apply): decodes in groups of
    equal and mixed contexts, fresh prefills batched by length, prefills after a cached
    prefix, on full and sliding layers; a cap of 2 squashes most scores."""
    torch.manual_seed(block_size + 7)
    decodes = [(30, 1)] * 3 + [(int(n), 1) for n in torch.randint(0, 40, (DECODE_GROUP + 3,))]
    shapes = [*decodes, (0, 3), (0, 23), (0, 23), (13, 6), (2, 30)]
    check_against_dense(
        shapes, block_size, heads=6, kv_heads=2, num_blocks=1024, window=window, softcap=2.0
    )


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("block_size", [1, 16])
@pytest.mark.parametrize("budget", [None, 300])
def test_attention_sinks_match_dense(
    window: int | None, block_size: int, budget: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gpt-oss's per-head sinks (which SDPA cannot apply), spread from "attend to almost
    nothing" to "a key among many", over decodes, fresh and prefixed prefills, on full
    and sliding layers; query heads in GQA groups each keep their own sink. A `budget`
    of a few hundred bytes makes the explicit steps take one query row at a time."""
    if budget is not None:
        monkeypatch.setattr(torch_attention, "EXPLICIT_SCORES_BYTES", budget)
    torch.manual_seed(block_size + 11)
    decodes = [(30, 1)] * 3 + [(int(n), 1) for n in torch.randint(0, 40, (DECODE_GROUP + 3,))]
    shapes = [*decodes, (0, 3), (0, 23), (0, 23), (13, 6), (2, 30)]
    sinks = torch.tensor([4.0, -3.0, 0.5, 1.5, -0.7, 2.5])
    check_against_dense(
        shapes, block_size, heads=6, kv_heads=2, num_blocks=1024, window=window, sinks=sinks
    )


def check_against_dense(
    shapes: list[tuple[int, int]],
    block_size: int,
    heads: int,
    kv_heads: int,
    num_blocks: int,
    window: int | None = None,
    softcap: float | None = None,
    every_layer: bool = False,
    sinks: torch.Tensor | None = None,
    causal: bool = True,
) -> TorchAttentionMetadata:
    """Runs the backend on `shapes` against dense attention; returns the step's metadata.
    `every_layer`: the step says every layer slides in `window`."""
    dim = 16
    decodes = [s for s in shapes if s[1] == 1]
    prefills = [s for s in shapes if s[1] != 1]
    shapes = decodes + prefills
    k_cache = torch.zeros(num_blocks, block_size, kv_heads, dim)
    v_cache = torch.zeros_like(k_cache)
    free = torch.randperm(num_blocks).tolist()
    tables, contexts, queries, keys, values, slots = [], [], [], [], [], []
    for cached, new in shapes:
        total = cached + new
        table = [free.pop() for _ in range(-(-total // block_size))]
        k_all, v_all = torch.randn(total, kv_heads, dim), torch.randn(total, kv_heads, dim)
        positions = slots_for(table, total, block_size)
        flat_k = k_cache.view(-1, kv_heads, dim)
        flat_v = v_cache.view(-1, kv_heads, dim)
        flat_k[positions[:cached]] = k_all[:cached]
        flat_v[positions[:cached]] = v_all[:cached]
        tables.append(table)
        contexts.append((k_all, v_all))
        queries.append(torch.randn(new, heads, dim))
        keys.append(k_all[cached:])
        values.append(v_all[cached:])
        slots.extend(positions[cached:])
    backend = TorchAttentionBackend(torch.device("cpu"))
    metadata = backend.prepare(
        AttentionInputs(
            query_lens=[n for _, n in shapes],
            context_lens=[c + n for c, n in shapes],
            block_tables=tables,
            slot_mapping=torch.tensor(slots),
            num_decodes=len(decodes),
            block_size=block_size,
            every_layer_window=window if every_layer else None,
            causal=causal,
        )
    )
    scale = dim**-0.5
    q_all, k_new, v_new = torch.cat(queries), torch.cat(keys), torch.cat(values)
    out = backend.forward(
        q_all, k_new, v_new, k_cache, v_cache, metadata, scale, window, softcap, sinks
    )
    expected = torch.cat(
        [
            dense_attention(q, k, v, scale, window, softcap, sinks, causal)
            for q, (k, v) in zip(queries, contexts, strict=True)
        ]
    )
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    if window is not None and not every_layer:  # a full-attention layer of the same step
        full = backend.forward(q_all, k_new, v_new, k_cache, v_cache, metadata, scale)
        expected = torch.cat(
            [dense_attention(q, k, v, scale) for q, (k, v) in zip(queries, contexts, strict=True)]
        )
        torch.testing.assert_close(full, expected, atol=1e-5, rtol=1e-5)
    # The new keys/values landed in the cache at their slots.
    torch.testing.assert_close(
        k_cache.view(-1, kv_heads, dim)[torch.tensor(slots)], torch.cat(keys)
    )
    return metadata


def test_sdpa_gets_each_mask_once_per_step_in_additive_form() -> None:
    """Every layer of a step attends with the same masks: the additive copies SDPA takes
    are made once (SDPA would convert a bool mask on every call) and hide what the bool
    masks hide."""
    torch.manual_seed(7)
    shapes = [(9, 1), (30, 1), (3, 1), (13, 6), (16, 5)]  # mixed decode lengths, prefixes
    metadata = check_against_dense(shapes, 4, heads=6, kv_heads=2, num_blocks=128)
    masks = [g.mask for g in metadata.decodes] + [p.mask for p in metadata.prefills]
    masks = [m for m in masks if m is not None]
    assert len(masks) == 3 and len(metadata.sdpa_masks) == 3
    for mask in masks:
        additive = metadata.sdpa_mask(mask, torch.float32)
        assert additive is metadata.sdpa_masks[(id(mask), torch.float32)]
        assert torch.equal(additive == 0, mask) and torch.isneginf(additive[~mask]).all()
    assert len(metadata.sdpa_masks) == 3
