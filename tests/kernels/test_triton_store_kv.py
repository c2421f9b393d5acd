"""Triton store_kv against the torch reference: each new K/V lands at its slot, nothing else."""

from __future__ import annotations

import pytest
import torch

from kernels.torch_attention import store_kv as torch_store_kv
from kernels.triton_store_kv import store_kv

from .paged import make_paged_batch
from .tolerances import DTYPES


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_store_kv_matches_torch(
    device: torch.device, dtype: torch.dtype, block_size: int, kv_heads: int
) -> None:
    batch = make_paged_batch(
        [(0, 1), (7, 1), (0, 13), (1, 5), (block_size + 3, 9)],
        block_size=block_size,
        heads=kv_heads,
        kv_heads=kv_heads,
        head_dim=24,  # not a power of two: the kernel masks its padded tile
        dtype=dtype,
        device=device,
        seed=block_size * 10 + kv_heads,
    )
    # Keys and values arrive as strided views of one fused QKV projection, as in the model.
    tokens = batch.key.shape[0]
    fused = torch.randn(tokens, 3, kv_heads, 24, device=device).to(dtype)
    fused[:, 1], fused[:, 2] = batch.key, batch.value
    key, value = fused[:, 1], fused[:, 2]
    expected_k, expected_v = batch.key_cache.clone(), batch.value_cache.clone()
    torch_store_kv(key, value, expected_k, expected_v, batch.inputs.slot_mapping)
    k_cache, v_cache = batch.key_cache.clone(), batch.value_cache.clone()
    store_kv(key, value, k_cache, v_cache, batch.inputs.slot_mapping)
    # A copy: bit-exact, dtype regardless.
    assert torch.equal(k_cache, expected_k)
    assert torch.equal(v_cache, expected_v)


def test_negative_slots_are_skipped(device: torch.device) -> None:
    k_cache = torch.zeros(4, 8, 2, 16, device=device)
    v_cache = torch.zeros_like(k_cache)
    key = torch.ones(3, 2, 16, device=device)
    store_kv(key, 2 * key, k_cache, v_cache, torch.tensor([5, -1, 17], device=device))
    flat_k, flat_v = k_cache.view(-1, 2, 16), v_cache.view(-1, 2, 16)
    written = torch.zeros(32, dtype=torch.bool)
    written[[5, 17]] = True
    assert bool((flat_k[written] == 1).all()) and bool((flat_v[written] == 2).all())
    assert not flat_k[~written].any() and not flat_v[~written].any()
