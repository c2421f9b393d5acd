"""Triton prefill attention against the torch backend's prefill path (chunked, with prefixes)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from kernels.triton_prefill_attention import make_prefill_batch, prefill_attention

from .paged import PagedBatch, block_table, make_paged_batch, stored_caches
from .paged import torch_reference as _reference
from .tolerances import DTYPES, assert_close

HEAD_DIM = 32

# (cached prefix, new tokens): no prefix, a one-token prefix, prefixes that end
# mid-block and on a block edge, a one-token chunk, and a chunk longer than a
# query tile so rows straddle tiles.
SHAPES = [(0, 13), (1, 9), (37, 20), (16, 2), (5, 1), (0, 40)]


def _chunks(
    shapes: list[tuple[int, int]],
    dtype: torch.dtype,
    device: torch.device,
    seed: int,
    block_size: int = 8,
    heads: int = 4,
    kv_heads: int = 2,
) -> PagedBatch:
    """`shapes` (cached prefix, new tokens) as prefill chunks, in that order."""
    return make_paged_batch(
        shapes,
        block_size=block_size,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=HEAD_DIM,
        dtype=dtype,
        device=device,
        seed=seed,
        all_prefill=True,
    )


def _triton(
    batch: PagedBatch,
    device: torch.device,
    scale: float,
    block_m: int,
    block_n: int,
    window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    k_cache, v_cache = stored_caches(batch)
    inputs = batch.inputs
    tables = block_table(inputs, device)
    prefill = make_prefill_batch(tables, inputs.query_lens, inputs.context_lens, inputs.causal)
    return prefill_attention(
        batch.query,
        k_cache,
        v_cache,
        prefill,
        scale,
        block_m=block_m,
        block_n=block_n,
        window=window,
        softcap=softcap,
        sinks=sinks,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (8, 2)])
def test_chunked_prefill_matches_torch(
    device: torch.device, dtype: torch.dtype, block_size: int, heads: int, kv_heads: int
) -> None:
    seed = block_size + heads * 10 + kv_heads
    batch = _chunks(SHAPES, dtype, device, seed, block_size, heads, kv_heads)
    scale = HEAD_DIM**-0.5
    expected = _reference(batch, device, scale)
    assert_close(_triton(batch, device, scale, block_m=16, block_n=16), expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [8, 32])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_encoder_prompts_match_torch(
    device: torch.device, dtype: torch.dtype, block_size: int, heads: int, kv_heads: int
) -> None:
    """Not causal (an encoder's step): whole prompts of lengths off the block size and
    past a query tile, where every row sees every key, later tiles' too."""
    shapes = [(0, 13), (0, 2), (0, 40), (0, 9)]
    batch = _chunks(shapes, dtype, device, block_size + heads, block_size, heads, kv_heads)
    batch = replace(batch, inputs=replace(batch.inputs, causal=False))
    scale = HEAD_DIM**-0.5
    expected = _reference(batch, device, scale)
    assert_close(_triton(batch, device, scale, block_m=16, block_n=16), expected)


def _gqa_chunks(dtype: torch.dtype, device: torch.device, seed: int) -> PagedBatch:
    """SHAPES' chunks in blocks of 8; 4 query heads over 2 KV heads."""
    return _chunks(SHAPES, dtype, device, seed)


@pytest.mark.parametrize("window", [1, 6, 25])
@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[2]])
@pytest.mark.parametrize("block_m,block_n", [(16, 16), (64, 16)])
def test_sliding_window_prefill_matches_torch(
    device: torch.device, dtype: torch.dtype, window: int, block_m: int, block_n: int
) -> None:
    """Key tiles wholly before a query tile's window are skipped; rows straddling
    tiles, chunks after cached prefixes and one-token chunks see only their window.
    With query tiles taller than key tiles, a tile's later rows see nothing of its
    first key tile (their sums must stay 0, not NaN)."""
    batch = _gqa_chunks(dtype, device, seed=window)
    scale = HEAD_DIM**-0.5
    expected = _reference(batch, device, scale, window)
    assert_close(_triton(batch, device, scale, block_m, block_n, window), expected)


@pytest.mark.parametrize("window", [None, 6])
@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[2]])
def test_softcapped_prefill_matches_torch(
    device: torch.device, dtype: torch.dtype, window: int | None
) -> None:
    """Gemma 2's soft-capped scores over chunks with and without cached prefixes, on a
    full and a sliding layer; a cap of 2 squashes most scores."""
    batch = _gqa_chunks(dtype, device, seed=11)
    scale = HEAD_DIM**-0.5
    expected = _reference(batch, device, scale, window, softcap=2.0)
    assert_close(_triton(batch, device, scale, 16, 16, window, softcap=2.0), expected)


@pytest.mark.parametrize("window", [None, 6])
@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[2]])
def test_attention_sinks_prefill_match_torch(
    device: torch.device, dtype: torch.dtype, window: int | None
) -> None:
    """gpt-oss's per-head sinks over chunks with and without cached prefixes, on a full
    and a sliding layer (where a row's first tiles may hold no key it sees)."""
    batch = _gqa_chunks(dtype, device, seed=13)
    scale = HEAD_DIM**-0.5
    sinks = torch.tensor([5.0, -3.0, 0.25, 1.5], device=device)
    expected = _reference(batch, device, scale, window, sinks=sinks)
    assert_close(_triton(batch, device, scale, 16, 16, window, sinks=sinks), expected)


@pytest.mark.parametrize("block_m,block_n", [(16, 32), (32, 16), (64, 64)])
def test_tile_sizes_agree(device: torch.device, block_m: int, block_n: int) -> None:
    """The causal skip of key tiles must not depend on how query and key tiles line up."""
    batch = _chunks(SHAPES, torch.float32, device, block_m + block_n, block_size=16)
    scale = HEAD_DIM**-0.5
    expected = _reference(batch, device, scale)
    assert_close(_triton(batch, device, scale, block_m=block_m, block_n=block_n), expected)


def test_head_dim_not_a_power_of_two(device: torch.device) -> None:
    batch = make_paged_batch(
        SHAPES,
        block_size=16,
        heads=6,
        kv_heads=3,
        head_dim=40,
        dtype=torch.float32,
        device=device,
        seed=40,
        all_prefill=True,
    )
    scale = 40**-0.5
    assert_close(
        _triton(batch, device, scale, block_m=16, block_n=16), _reference(batch, device, scale)
    )
