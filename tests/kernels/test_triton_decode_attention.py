"""Triton decode attention (split-K) against the torch backend's decode path."""

from __future__ import annotations

import pytest
import torch

from kernels.triton_decode_attention import decode_attention, make_decode_batch

from .paged import PagedBatch, block_table, make_paged_batch, stored_caches
from .paged import torch_reference as _reference
from .tolerances import DTYPES, assert_close

HEAD_DIM = 32


def _triton(
    batch: PagedBatch,
    device: torch.device,
    scale: float,
    partition: int,
    window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    k_cache, v_cache = stored_caches(batch)
    inputs = batch.inputs
    tables = block_table(inputs, device)
    decode = make_decode_batch(tables, inputs.context_lens, partition)
    return decode_attention(
        batch.query, k_cache, v_cache, decode, scale, window=window, softcap=softcap, sinks=sinks
    )


# Context lengths: one token (empty prefix), exact block multiples and not, and long
# enough to span several partitions of 16 and 32 tokens.
CONTEXTS = [1, 2, 8, 17, 32, 45, 100]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (8, 2)])
def test_split_k_decode_matches_torch(
    device: torch.device, dtype: torch.dtype, block_size: int, heads: int, kv_heads: int
) -> None:
    batch = make_paged_batch(
        [(c - 1, 1) for c in CONTEXTS],
        block_size=block_size,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=HEAD_DIM,
        dtype=dtype,
        device=device,
        seed=block_size + heads * 10 + kv_heads,
    )
    scale = HEAD_DIM**-0.5
    assert_close(_triton(batch, device, scale, partition=32), _reference(batch, device, scale))


@pytest.mark.parametrize("window", [1, 7, 40, 200])
@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[2]])
def test_sliding_window_decode_matches_torch(
    device: torch.device, dtype: torch.dtype, window: int
) -> None:
    """Partitions of 16 wholly before the window are skipped, by the partition kernel
    and the combine alike; a window past every context changes nothing."""
    batch = _gqa_batch(dtype, device, seed=window)
    scale = HEAD_DIM**-0.5
    for partition in (16, 512):
        got = _triton(batch, device, scale, partition, window)
        assert_close(got, _reference(batch, device, scale, window))


@pytest.mark.parametrize("window", [None, 40])
@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[2]])
def test_softcapped_decode_matches_torch(
    device: torch.device, dtype: torch.dtype, window: int | None
) -> None:
    """Gemma 2's soft-capped scores, in several partitions (combine kernel) and in one,
    on a full and a sliding layer; a cap of 2 squashes most scores."""
    batch = _gqa_batch(dtype, device, seed=3)
    scale = HEAD_DIM**-0.5
    expected = _reference(batch, device, scale, window, softcap=2.0)
    for partition in (16, 512):
        assert_close(_triton(batch, device, scale, partition, window, softcap=2.0), expected)


@pytest.mark.parametrize("window", [None, 40])
@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[2]])
def test_attention_sinks_decode_match_torch(
    device: torch.device, dtype: torch.dtype, window: int | None
) -> None:
    """gpt-oss's per-head sinks, in several partitions (the combine adds them) and in
    one (the partition kernel starts from them), on a full and a sliding layer; sinks
    from far above the scores (a head attending to almost nothing) to far below."""
    batch = _gqa_batch(dtype, device, seed=5)
    scale = HEAD_DIM**-0.5
    sinks = torch.tensor([6.0, -4.0, 0.0, 1.0, -1.0, 2.0, 0.5, 3.0], device=device)
    expected = _reference(batch, device, scale, window, sinks=sinks)
    for partition in (16, 512):
        assert_close(_triton(batch, device, scale, partition, window, sinks=sinks), expected)


def _gqa_batch(dtype: torch.dtype, device: torch.device, seed: int) -> PagedBatch:
    """One decode per context length in CONTEXTS; 8 query heads over 2 KV heads."""
    return make_paged_batch(
        [(c - 1, 1) for c in CONTEXTS],
        block_size=16,
        heads=8,
        kv_heads=2,
        head_dim=HEAD_DIM,
        dtype=dtype,
        device=device,
        seed=seed,
    )


@pytest.mark.parametrize("partition", [16, 512])
@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[2]])
def test_partition_sizes_agree(device: torch.device, dtype: torch.dtype, partition: int) -> None:
    """Many small partitions (combine kernel) and a single one (no combine) give one answer."""
    batch = _gqa_batch(dtype, device, seed=partition)
    scale = HEAD_DIM**-0.5
    assert_close(
        _triton(batch, device, scale, partition=partition), _reference(batch, device, scale)
    )


def test_head_dim_not_a_power_of_two(device: torch.device) -> None:
    batch = make_paged_batch(
        [(c - 1, 1) for c in CONTEXTS],
        block_size=16,
        heads=6,
        kv_heads=2,
        head_dim=40,
        dtype=torch.float32,
        device=device,
        seed=40,
    )
    scale = 40**-0.5
    assert_close(_triton(batch, device, scale, partition=32), _reference(batch, device, scale))


@pytest.mark.parametrize("partition", [16, 512])
@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[2]])
def test_static_buffer_metadata_with_padded_rows(
    device: torch.device, dtype: torch.dtype, partition: int
) -> None:
    """What a recorded decode graph runs (engine/decode_graphs.py): partitions for the
    longest allowed context, rows padded to the recorded batch size with slot -1 and
    context 0, block tables wider than needed with stale columns. Real rows get the eager
    answer and cache; padded rows get zeros (not 0/0) and store nothing."""
    from kernels.attention import block_table_tensor
    from kernels.triton_attention import TritonAttentionBackend

    batch = _gqa_batch(dtype, device, seed=77)
    scale = HEAD_DIM**-0.5
    # 16: several partitions per row and the combine kernel; 512: one, no combine.
    backend = TritonAttentionBackend(device, partition_size=partition)
    inputs = batch.inputs
    n, pad, max_context = len(CONTEXTS), 3, 1024

    def run(metadata: object, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k_cache, v_cache = batch.key_cache.clone(), batch.value_cache.clone()

        def padded(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t, torch.randn(rows - n, *t.shape[1:]).to(t)])

        q, k, v = (padded(t) for t in (batch.query, batch.key, batch.value))
        out = backend.forward(q, k, v, k_cache, v_cache, metadata, scale)
        return out, k_cache, v_cache

    eager_out, eager_k, eager_v = run(backend.prepare(inputs), n)
    slots = torch.cat(
        [inputs.slot_mapping, torch.full((pad,), -1, dtype=torch.long, device=device)]
    )
    tables = torch.full((n + pad, max_context // 16), 7, dtype=torch.int32, device=device)
    used = block_table_tensor(inputs.block_tables, inputs.context_lens, 16, device)
    tables[:n, : used.shape[1]] = used
    lens = torch.tensor([*inputs.context_lens, *[0] * pad], dtype=torch.int32, device=device)
    out, k_cache, v_cache = run(backend.graph_metadata(slots, tables, lens, max_context), n + pad)
    # Bit-equal here; a GPU's combine may sum the partitions in another order.
    assert_close(out[:n], eager_out)
    assert torch.equal(out[n:], torch.zeros_like(out[n:]))
    assert torch.equal(k_cache, eager_k) and torch.equal(v_cache, eager_v)
