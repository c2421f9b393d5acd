"""An FP8 KV cache (kernels/kv_cache_dtype.py) through the Triton kernels and the torch
reference: codes written bit for bit alike, attention alike over them, and the torch
reference itself attending exactly what the cache gives back."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from kernels.kv_cache_dtype import KvScales, dequantize_kv, quantize_kv
from kernels.torch_attention import TorchAttentionBackend
from kernels.torch_attention import store_kv as torch_store_kv
from kernels.triton_attention import TritonAttentionBackend
from kernels.triton_store_kv import store_kv

from .paged import make_paged_batch, torch_reference, with_fp8_caches
from .tolerances import DTYPES, assert_close

FORMATS = [
    pytest.param(torch.float8_e4m3fn, id="e4m3"),
    pytest.param(torch.float8_e5m2, id="e5m2"),
]
# Keys scaled into e4m3's range; values scaled past it, so that |v| > ~2.2 saturates.
SCALES = KvScales(k=0.02, v=0.005)
# Decodes over one token, a block's worth and several partitions of 32; prefill chunks
# with no prefix, a one-token prefix and a prefix ending mid-block.
SHAPES = [(9, 1), (0, 1), (70, 1), (0, 7), (1, 5), (13, 6), (16, 9)]


def _batch(
    dtype: torch.dtype, heads: int, kv_heads: int, seed: int, fmt: torch.dtype, head_dim: int = 24
):
    batch = make_paged_batch(
        SHAPES,
        block_size=8,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,  # 24: not a power of two, masked tiles
        dtype=dtype,
        device=torch.device("cpu"),
        seed=seed,
    )
    return with_fp8_caches(batch, fmt, SCALES)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_store_kv_writes_torchs_codes(
    device: torch.device, dtype: torch.dtype, fmt: torch.dtype
) -> None:
    batch = _batch(dtype, 2, 2, seed=1, fmt=fmt)
    slots = batch.inputs.slot_mapping.to(device)
    expected = [batch.key_cache.clone(), batch.value_cache.clone()]
    torch_store_kv(batch.key, batch.value, *expected, batch.inputs.slot_mapping, SCALES)
    got = [batch.key_cache.to(device, copy=True), batch.value_cache.to(device, copy=True)]
    store_kv(batch.key.to(device), batch.value.to(device), *got, slots, SCALES)
    for cache, reference in zip(got, expected, strict=True):
        assert cache.dtype == fmt
        assert torch.equal(cache.cpu().view(torch.uint8), reference.view(torch.uint8))
    # The new tokens really were written (and saturated values stayed finite).
    assert not torch.equal(expected[1].view(torch.uint8), batch.value_cache.view(torch.uint8))
    assert bool(dequantize_kv(expected[1], torch.float32, SCALES.v).isfinite().all())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[2]])
@pytest.mark.parametrize(
    "heads,kv_heads,head_dim",
    # Past head_dim 64 an FP8 cache takes smaller tiles in 16-bit dtypes.
    [(4, 4, 24), (8, 2, 24), (4, 2, 80)],
)
def test_mixed_batch_over_fp8_caches_matches_torch_backend(
    device: torch.device,
    dtype: torch.dtype,
    heads: int,
    kv_heads: int,
    head_dim: int,
    fmt: torch.dtype,
) -> None:
    """store_kv, split-K decodes and prefill chunks in one step, both backends."""
    batch = _batch(dtype, heads, kv_heads, seed=heads + kv_heads, fmt=fmt, head_dim=head_dim)
    scale = head_dim**-0.5
    results = []
    for backend in (TorchAttentionBackend(device), TritonAttentionBackend(device, 32)):
        caches = batch.key_cache.to(device, copy=True), batch.value_cache.to(device, copy=True)
        metadata = backend.prepare(batch.inputs)
        q, k, v = (t.to(device) for t in (batch.query, batch.key, batch.value))
        out = backend.forward(q, k, v, *caches, metadata, scale, kv_scales=SCALES)
        results.append((out.cpu(), caches))
    (expected, ref_caches), (out, caches) = results
    assert_close(out, expected)
    for cache, reference in zip(caches, ref_caches, strict=True):
        assert torch.equal(cache.cpu().view(torch.uint8), reference.cpu().view(torch.uint8))


@pytest.mark.parametrize("fmt", FORMATS)
def test_torch_reference_attends_what_the_cache_gives_back(fmt: torch.dtype) -> None:
    """Over an FP8 cache, attention equals attention over a full-precision cache holding
    the dequantized codes, the new tokens included: for prefill chunks with a prefix
    (read back from the cache) and without one (never read from it) alike."""
    device = torch.device("cpu")
    batch = _batch(torch.float32, 4, 2, seed=7, fmt=fmt)
    scale = 24**-0.5
    got = torch_reference(batch, device, scale, kv_scales=SCALES)

    def round_trip(t: torch.Tensor, s: float) -> torch.Tensor:
        return dequantize_kv(quantize_kv(t, fmt, s), torch.float32, s)

    plain = replace(
        batch,
        key=round_trip(batch.key, SCALES.k),
        value=round_trip(batch.value, SCALES.v),
        key_cache=dequantize_kv(batch.key_cache, torch.float32, SCALES.k),
        value_cache=dequantize_kv(batch.value_cache, torch.float32, SCALES.v),
    )
    expected = torch_reference(plain, device, scale)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    # And quantization is visible: attention over the unquantized values differs.
    unquantized = torch_reference(replace(plain, key=batch.key, value=batch.value), device, scale)
    assert not torch.allclose(got, unquantized, atol=1e-3)
