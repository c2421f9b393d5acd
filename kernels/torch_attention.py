"""Paged attention in plain torch ops: the CPU path and the reference for Triton.

Decodes (one new token each) run as one batched attention over KV gathered
from their block tables; prefill chunks run one sequence at a time, causally
over their own new tokens and any cached prefix. Gather indices and masks are
built once per step in `prepare` and reused by every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels.attention import AttentionInputs
from kernels.fused_ops import TORCH_OPS


@dataclass(frozen=True)
class PrefillSlice:
    """Prefill rows in the flattened batch and how to reach their KV.

    Without a cached prefix (`kv_slots` None) a slice may hold `count`
    back-to-back chunks of equal length, attended in one batched call.
    """

    start: int
    end: int
    kv_slots: torch.Tensor | None
    mask: torch.Tensor | None
    count: int = 1


@dataclass(frozen=True)
class TorchAttentionMetadata:
    slot_mapping: torch.Tensor
    num_decodes: int
    decode_slots: torch.Tensor | None  # [B * L] flat cache slots, padded
    decode_mask: torch.Tensor | None  # [B, 1, 1, L], True where a key is attended
    decode_len: int
    prefills: tuple[PrefillSlice, ...]
    # Gather targets reused by every layer of the step: fresh multi-MB
    # allocations per layer cost page faults and evict the cache.
    gather_buffers: dict[tuple[torch.dtype, int, int], tuple[torch.Tensor, torch.Tensor]]


def slots_for(block_table: list[int], length: int, block_size: int) -> list[int]:
    """Flat cache slots of the first `length` tokens of a sequence."""
    return [block_table[i // block_size] * block_size + i % block_size for i in range(length)]


class TorchAttentionBackend:
    """AttentionBackend over torch ops (scaled_dot_product_attention)."""

    name = "torch"
    ops = TORCH_OPS

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def prepare(self, inputs: AttentionInputs) -> TorchAttentionMetadata:
        bs = inputs.block_size
        nd = inputs.num_decodes
        decode_slots = decode_mask = None
        if nd:
            lens = torch.tensor(inputs.context_lens[:nd], dtype=torch.long)
            max_len = int(lens.max())
            max_blocks = (max_len + bs - 1) // bs
            table = torch.zeros(nd, max_blocks, dtype=torch.long)
            for row, blocks in enumerate(inputs.block_tables[:nd]):
                used = blocks[:max_blocks]
                table[row, : len(used)] = torch.tensor(used, dtype=torch.long)
            offsets = torch.arange(max_blocks * bs, dtype=torch.long)
            slots = table[:, offsets // bs] * bs + offsets % bs
            valid = offsets[None, :] < lens[:, None]
            decode_slots = slots[:, :max_len].reshape(-1).to(self.device, non_blocking=True)
            decode_mask = valid[:, None, None, :max_len].to(self.device, non_blocking=True)
        else:
            max_len = 0
        prefills = []
        start = nd
        for q_len, ctx, blocks in zip(
            inputs.query_lens[nd:], inputs.context_lens[nd:], inputs.block_tables[nd:], strict=True
        ):
            end = start + q_len
            if ctx == q_len:
                # No cached prefix: attend over the new tokens directly, causally,
                # batched with the previous chunk when their lengths match.
                last = prefills[-1] if prefills else None
                if last and last.kv_slots is None and last.end - last.start == q_len * last.count:
                    prefills[-1] = PrefillSlice(last.start, end, None, None, last.count + 1)
                else:
                    prefills.append(PrefillSlice(start, end, None, None))
            else:
                kv_slots = torch.tensor(slots_for(blocks, ctx, bs), dtype=torch.long)
                query_pos = torch.arange(ctx - q_len, ctx)
                mask = torch.arange(ctx)[None, :] <= query_pos[:, None]
                prefills.append(
                    PrefillSlice(start, end, kv_slots.to(self.device), mask.to(self.device))
                )
            start = end
        return TorchAttentionMetadata(
            inputs.slot_mapping, nd, decode_slots, decode_mask, max_len, tuple(prefills), {}
        )

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        metadata: TorchAttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        store_kv(key, value, key_cache, value_cache, metadata.slot_mapping)
        num_kv_heads, head_dim = key_cache.shape[2], key_cache.shape[3]
        flat_k = key_cache.view(-1, num_kv_heads, head_dim)
        flat_v = value_cache.view(-1, num_kv_heads, head_dim)
        out = torch.empty_like(query)
        nd = metadata.num_decodes
        if nd:
            k_buf, v_buf = _gather_buffers(metadata, flat_k)
            torch.index_select(flat_k, 0, metadata.decode_slots, out=k_buf)
            torch.index_select(flat_v, 0, metadata.decode_slots, out=v_buf)
            length = metadata.decode_len
            k = k_buf.view(nd, length, num_kv_heads, head_dim).transpose(1, 2)  # [B, KVH, L, D]
            v = v_buf.view(nd, length, num_kv_heads, head_dim).transpose(1, 2)
            # GQA without repeating K/V: the query heads sharing a KV head act as
            # that head's "query positions".
            group = query.shape[1] // num_kv_heads
            q = query[:nd].view(nd, num_kv_heads, group, head_dim)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=metadata.decode_mask, scale=scale)
            out[:nd] = o.reshape(nd, -1, head_dim)
        for p in metadata.prefills:
            rows = slice(p.start, p.end)
            if p.kv_slots is None:
                # [count, heads, q_len, D]: equal-length chunks batched, causal.
                q_len = (p.end - p.start) // p.count
                q, k, v = (
                    t[rows].view(p.count, q_len, *t.shape[1:]).transpose(1, 2)
                    for t in (query, key, value)
                )
                o = F.scaled_dot_product_attention(
                    q, k, v, is_causal=True, scale=scale, enable_gqa=True
                )
                out[rows] = o.transpose(1, 2).reshape(p.end - p.start, *query.shape[1:])
            else:
                q = query[rows].transpose(0, 1)  # [H, Q, D]
                k = flat_k[p.kv_slots].transpose(0, 1)
                v = flat_v[p.kv_slots].transpose(0, 1)
                o = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=p.mask, scale=scale, enable_gqa=True
                )
                out[rows] = o.transpose(0, 1)
        return out


def _gather_buffers(
    metadata: TorchAttentionMetadata, flat_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    key = (flat_cache.dtype, flat_cache.shape[1], flat_cache.shape[2])
    buffers = metadata.gather_buffers.get(key)
    if buffers is None:
        assert metadata.decode_slots is not None
        shape = (metadata.decode_slots.shape[0], *flat_cache.shape[1:])
        buffers = (
            torch.empty(shape, dtype=flat_cache.dtype, device=flat_cache.device),
            torch.empty(shape, dtype=flat_cache.dtype, device=flat_cache.device),
        )
        metadata.gather_buffers[key] = buffers
    return buffers


def store_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write each new token's K and V at its slot in the paged cache (torch reference)."""
    num_kv_heads, head_dim = key_cache.shape[2], key_cache.shape[3]
    key_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, key)
    value_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, value)
