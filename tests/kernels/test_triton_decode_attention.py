"""Triton decode attention (split-K) against the torch backend's decode path."""

from __future__ import annotations

import pytest
import torch

from kernels.torch_attention import TorchAttentionBackend
from kernels.triton_decode_attention import decode_attention, make_decode_batch

from .paged import PagedBatch, block_table, make_paged_batch
from .tolerances import DTYPES, assert_close

HEAD_DIM = 32


def _reference(batch: PagedBatch, device: torch.device, scale: float) -> torch.Tensor:
    backend = TorchAttentionBackend(device)
    k_cache, v_cache = batch.key_cache.clone(), batch.value_cache.clone()
    metadata = backend.prepare(batch.inputs)
    return backend.forward(batch.query, batch.key, batch.value, k_cache, v_cache, metadata, scale)


def _triton(batch: PagedBatch, device: torch.device, scale: float, partition: int) -> torch.Tensor:
    # The reference stores the new tokens itself; here they go in with torch's store so
    # that only the attention kernel is under test.
    k_cache, v_cache = batch.key_cache.clone(), batch.value_cache.clone()
    flat = (-1, *k_cache.shape[2:])
    k_cache.view(flat).index_copy_(0, batch.inputs.slot_mapping, batch.key)
    v_cache.view(flat).index_copy_(0, batch.inputs.slot_mapping, batch.value)
    inputs = batch.inputs
    tables = block_table(inputs, device)
    decode = make_decode_batch(tables, inputs.context_lens, partition)
    return decode_attention(batch.query, k_cache, v_cache, decode, scale)


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


@pytest.mark.parametrize("partition", [16, 512])
@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[2]])
def test_partition_sizes_agree(device: torch.device, dtype: torch.dtype, partition: int) -> None:
    """Many small partitions (combine kernel) and a single one (no combine) give one answer."""
    batch = make_paged_batch(
        [(c - 1, 1) for c in CONTEXTS],
        block_size=16,
        heads=8,
        kv_heads=2,
        head_dim=HEAD_DIM,
        dtype=dtype,
        device=device,
        seed=partition,
    )
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
