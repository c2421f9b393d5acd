"""Random paged-KV batches for the attention kernel tests, laid out as the model runner does."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from kernels.attention import AttentionInputs
from kernels.kv_cache_dtype import UNIT_SCALES, KvScales, quantize_kv
from kernels.torch_attention import TorchAttentionBackend, slots_for, store_kv


@dataclass(frozen=True)
class PagedBatch:
    """New tokens' q/k/v plus caches holding each sequence's cached prefix.

    Cache slots no sequence owns hold random values, not zeros, so a kernel
    reading a wrong slot changes the result instead of adding a harmless zero.
    """

    inputs: AttentionInputs
    query: torch.Tensor  # [T, heads, D]
    key: torch.Tensor  # [T, kv_heads, D]
    value: torch.Tensor
    key_cache: torch.Tensor  # [blocks, block_size, kv_heads, D]
    value_cache: torch.Tensor


def make_paged_batch(
    shapes: list[tuple[int, int]],
    *,
    block_size: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    device: torch.device,
    seed: int,
    all_prefill: bool = False,
) -> PagedBatch:
    """`shapes` are (cached prefix, new tokens) per sequence.

    As the model runner does, single-token sequences go first and count as
    decodes, unless `all_prefill` keeps the order and makes every one a prefill.
    """
    gen = torch.Generator().manual_seed(seed)
    if not all_prefill:
        shapes = [s for s in shapes if s[1] == 1] + [s for s in shapes if s[1] != 1]
    needed = sum(-(-(c + n) // block_size) for c, n in shapes)
    num_blocks = needed + 3
    cache_shape = (num_blocks, block_size, kv_heads, head_dim)
    key_cache = torch.randn(cache_shape, generator=gen)
    value_cache = torch.randn(cache_shape, generator=gen)
    free = torch.randperm(num_blocks, generator=gen).tolist()
    tables: list[list[int]] = []
    slots: list[int] = []
    keys, values = [], []
    for cached, new in shapes:
        total = cached + new
        table = [free.pop() for _ in range(-(-total // block_size))]
        positions = slots_for(table, total, block_size)
        tables.append(table)
        slots.extend(positions[cached:])
        keys.append(torch.randn(new, kv_heads, head_dim, generator=gen))
        values.append(torch.randn(new, kv_heads, head_dim, generator=gen))
    num_tokens = sum(n for _, n in shapes)
    query = torch.randn(num_tokens, heads, head_dim, generator=gen)
    inputs = AttentionInputs(
        query_lens=[n for _, n in shapes],
        context_lens=[c + n for c, n in shapes],
        block_tables=tables,
        slot_mapping=torch.tensor(slots, dtype=torch.long, device=device),
        num_decodes=0 if all_prefill else sum(1 for _, n in shapes if n == 1),
        block_size=block_size,
    )

    def put(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype)

    return PagedBatch(
        inputs,
        put(query),
        put(torch.cat(keys)),
        put(torch.cat(values)),
        put(key_cache),
        put(value_cache),
    )


def block_table(inputs: AttentionInputs, device: torch.device) -> torch.Tensor:
    """[N, max_blocks] int32, zero-padded: the kernels' view of the block tables."""
    width = max(len(t) for t in inputs.block_tables)
    rows = [t + [0] * (width - len(t)) for t in inputs.block_tables]
    return torch.tensor(rows, dtype=torch.int32, device=device)


def torch_reference(
    batch: PagedBatch,
    device: torch.device,
    scale: float,
    window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    kv_scales: KvScales = UNIT_SCALES,
) -> torch.Tensor:
    """The torch backend's answer for the batch: what every attention kernel must give."""
    backend = TorchAttentionBackend(device)
    k_cache, v_cache = batch.key_cache.clone(), batch.value_cache.clone()
    metadata = backend.prepare(batch.inputs)
    return backend.forward(
        batch.query,
        batch.key,
        batch.value,
        k_cache,
        v_cache,
        metadata,
        scale,
        window,
        softcap,
        sinks,
        kv_scales,
    )


def stored_caches(
    batch: PagedBatch, kv_scales: KvScales = UNIT_SCALES
) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of the caches with the new tokens' K/V written by torch, so that a test of
    an attention kernel tests only that kernel, not store_kv."""
    k_cache, v_cache = batch.key_cache.clone(), batch.value_cache.clone()
    store_kv(batch.key, batch.value, k_cache, v_cache, batch.inputs.slot_mapping, kv_scales)
    return k_cache, v_cache


def with_fp8_caches(batch: PagedBatch, fmt: torch.dtype, kv_scales: KvScales) -> PagedBatch:
    """The batch over FP8 caches (kernels/kv_cache_dtype.py) holding its caches' values
    quantized under `kv_scales`."""
    return replace(
        batch,
        key_cache=quantize_kv(batch.key_cache, fmt, kv_scales.k),
        value_cache=quantize_kv(batch.value_cache, fmt, kv_scales.v),
    )
