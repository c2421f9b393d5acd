"""Paged attention in plain torch ops: the CPU path and the reference for Triton.

Decodes (one new token each) run as batched attention over KV gathered from
their block tables, a group of sequences at a time: gathering every decode's
context at once writes and re-reads tens of MB per layer through DRAM, while a
group's gathered K/V (~2 MB) is still in cache when attention reads it. That
cut the decode attention time by a quarter at 64 sequences × 200 tokens.
Prefill chunks run one sequence at a time, causally over their own new tokens
and any cached prefix (an encoder's prompts, `AttentionInputs.causal` False,
see every key of their sequence). Gather indices and masks are built once per step in
`prepare` and reused by every layer (the masks' additive copies SDPA takes, on the
first layer's call). A sliding-window layer uses a variant of
the step's metadata built on its first call (decodes gather only the window's
keys; prefill masks also hide keys older than the window) and reused by the
step's other layers with that window. An FP8 cache (kernels/kv_cache_dtype.py)
is gathered as bytes and dequantized after the gather; a chunk attended
without the cache attends its keys and values as the cache would give them
back, so no path sees more precision than another.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from kernels.attention import AttentionInputs
from kernels.fused_ops import TORCH_OPS, FusedOps
from kernels.kv_cache_dtype import UNIT_SCALES, KvScales, dequantize_kv, is_fp8, quantize_kv
from kernels.linear import TORCH_LINEAR, linear_method_for


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


# Most bytes of fp32 scores the explicit (soft-capped or sink) attention holds at once.
EXPLICIT_SCORES_BYTES = 64 << 20
# Decodes per gather-and-attend group: 16 × 200 tokens of fp32 K and V for 3 KV
# heads is ~2.4 MB, within the L2+L3 a core sees; 16 and 32 were equally fast,
# 4 paid too much per-call overhead, all 64 at once spilled to DRAM.
DECODE_GROUP = 16


@dataclass(frozen=True)
class DecodeGroup:
    """Decode rows [start, end) and the padded KV slots their contexts occupy."""

    start: int
    end: int
    slots: torch.Tensor  # [(end - start) * length] flat cache slots, padded
    mask: torch.Tensor | None  # [n, 1, 1, length], True where a key is attended; None: all
    length: int


@dataclass(frozen=True)
class TorchAttentionMetadata:
    slot_mapping: torch.Tensor
    num_decodes: int
    decodes: tuple[DecodeGroup, ...]
    prefills: tuple[PrefillSlice, ...]
    # Gather targets reused by every layer of the step: fresh multi-MB
    # allocations per layer cost page faults and evict the cache.
    gather_buffers: dict[tuple[torch.dtype, int, int], tuple[torch.Tensor, torch.Tensor]]
    inputs: AttentionInputs | None = None
    # False (an encoder's step): prefill queries see every key of their sequence.
    causal: bool = True
    # This step's metadata for each sliding window seen so far.
    windowed: dict[int, TorchAttentionMetadata] = field(default_factory=dict)
    # The masks in SDPA's additive form, by (id of the bool mask, dtype): see sdpa_mask.
    sdpa_masks: dict[tuple[int, torch.dtype], torch.Tensor] = field(default_factory=dict)

    def sdpa_mask(
        self, mask: torch.Tensor | None, dtype: torch.dtype | None
    ) -> torch.Tensor | None:
        """`mask` as 0 / -inf in `dtype`, made once per step (`dtype` None: the bool mask
        itself, for the explicit soft-cap / sink path). Given a bool mask SDPA makes
        this copy itself on every call, i.e. in every layer (2048 queries over 6000 keys
        on CPU: 250 ms a call, ~25 of them the copy; a 6000-token prompt's prefill went
        from 23.1 to 22.5 s). The output is bit for bit the same."""
        if mask is None or dtype is None:
            return mask
        key = (id(mask), dtype)
        additive = self.sdpa_masks.get(key)
        if additive is None:
            additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
            additive.masked_fill_(~mask, float("-inf"))
            self.sdpa_masks[key] = additive
        return additive


def slots_for(block_table: list[int], length: int, block_size: int, start: int = 0) -> list[int]:
    """Flat cache slots of a sequence's tokens [start, length)."""
    return [
        block_table[i // block_size] * block_size + i % block_size for i in range(start, length)
    ]


class TorchAttentionBackend:
    """AttentionBackend over torch ops (scaled_dot_product_attention)."""

    name = "torch"

    def __init__(self, device: torch.device) -> None:
        self.device = device
        linear = linear_method_for(device)
        self.ops: FusedOps = (
            TORCH_OPS
            if linear is TORCH_LINEAR
            else replace(TORCH_OPS, name=f"torch+{linear.name}", linear=linear)
        )

    def prepare(self, inputs: AttentionInputs, window: int | None = None) -> TorchAttentionMetadata:
        """The step's metadata: whole-context, or for `window` (by default the window
        every layer slides in, when they all do)."""
        window = window if window is not None else inputs.every_layer_window
        nd = inputs.num_decodes
        decodes = tuple(
            self._decode_group(inputs, start, min(start + DECODE_GROUP, nd), window)
            for start in range(0, nd, DECODE_GROUP)
        )
        prefills = []
        start = nd
        for q_len, ctx, blocks in zip(
            inputs.query_lens[nd:], inputs.context_lens[nd:], inputs.block_tables[nd:], strict=True
        ):
            end = start + q_len
            if ctx == q_len and (window is None or q_len <= window):
                # No cached prefix: attend over the new tokens directly, causally,
                # batched with the previous chunk when their lengths match.
                last = prefills[-1] if prefills else None
                if last and last.kv_slots is None and last.end - last.start == q_len * last.count:
                    prefills[-1] = PrefillSlice(last.start, end, None, None, last.count + 1)
                else:
                    prefills.append(PrefillSlice(start, end, None, None))
            else:
                # Under a window only keys from the first query's window on are gathered
                # (blocks before it may have been given back: engine/block_manager.py).
                lo = 0 if window is None else max(0, ctx - q_len - window + 1)
                kv_slots = torch.tensor(slots_for(blocks, ctx, inputs.block_size, lo))
                query_pos = torch.arange(ctx - q_len, ctx)[:, None]
                key_pos = torch.arange(lo, ctx)[None, :]
                mask = key_pos <= query_pos
                if not inputs.causal:
                    mask = torch.ones_like(mask)
                if window is not None:
                    mask &= key_pos > query_pos - window
                prefills.append(
                    PrefillSlice(start, end, kv_slots.to(self.device), mask.to(self.device))
                )
            start = end
        return TorchAttentionMetadata(
            inputs.slot_mapping, nd, decodes, tuple(prefills), {}, inputs, inputs.causal
        )

    def _decode_group(
        self, inputs: AttentionInputs, start: int, end: int, window: int | None
    ) -> DecodeGroup:
        """Rows [start, end): each attends its whole context, or its last `window` keys."""
        bs = inputs.block_size
        lens = torch.tensor(inputs.context_lens[start:end], dtype=torch.long)
        first = torch.zeros_like(lens) if window is None else (lens - window).clamp(min=0)
        spans = lens - first
        max_len = int(spans.max())
        max_blocks = -(-int(lens.max()) // bs)
        table = torch.zeros(end - start, max_blocks, dtype=torch.long)
        for row, blocks in enumerate(inputs.block_tables[start:end]):
            used = blocks[:max_blocks]
            table[row, : len(used)] = torch.tensor(used, dtype=torch.long)
        offsets = torch.arange(max_len, dtype=torch.long)
        # Padding past a row's span reads its last key, which the mask hides.
        positions = torch.minimum(first[:, None] + offsets[None, :], lens[:, None] - 1)
        slots = (table.gather(1, positions // bs) * bs + positions % bs).reshape(-1)
        mask = None
        if int(spans.min()) < max_len:
            mask = (offsets[None, :] < spans[:, None])[:, None, None, :].to(self.device)
        return DecodeGroup(start, end, slots.to(self.device, non_blocking=True), mask, max_len)

    def _for_window(
        self, metadata: TorchAttentionMetadata, window: int | None
    ) -> TorchAttentionMetadata:
        """The step's metadata for a sliding-window layer (itself when no context in the
        step is longer than the window)."""
        inputs = metadata.inputs
        if (
            window is None
            or inputs is None
            or window == inputs.every_layer_window  # what `prepare` built already
            or max(inputs.context_lens, default=0) <= window
        ):
            return metadata
        variant = metadata.windowed.get(window)
        if variant is None:
            variant = self.prepare(inputs, window)
            metadata.windowed[window] = variant
        return variant

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        metadata: TorchAttentionMetadata,
        scale: float,
        window: int | None = None,
        softcap: float | None = None,
        sinks: torch.Tensor | None = None,
        kv_scales: KvScales = UNIT_SCALES,
    ) -> torch.Tensor:
        store_kv(key, value, key_cache, value_cache, metadata.slot_mapping, kv_scales)
        metadata = self._for_window(metadata, window)
        num_kv_heads, head_dim = key_cache.shape[2], key_cache.shape[3]
        cache_dtype = key_cache.dtype
        fp8 = is_fp8(cache_dtype)
        # An FP8 cache is gathered as its bytes (not every device has float8 gathers).
        raw = torch.uint8 if fp8 else cache_dtype
        flat_k = key_cache.view(raw).view(-1, num_kv_heads, head_dim)
        flat_v = value_cache.view(raw).view(-1, num_kv_heads, head_dim)

        def read(gathered: torch.Tensor, scale: float) -> torch.Tensor:
            """Gathered cache contents in the queries' dtype."""
            return dequantize_kv(gathered.view(cache_dtype), query.dtype, scale)

        if fp8:
            # What the cache gives back, for chunks attended without reading it.
            key = dequantize_kv(
                quantize_kv(key, key_cache.dtype, kv_scales.k), key.dtype, kv_scales.k
            )
            value = dequantize_kv(
                quantize_kv(value, key_cache.dtype, kv_scales.v), value.dtype, kv_scales.v
            )
        out = torch.empty_like(query)
        # SDPA takes additive masks; the explicit path (soft-cap, sinks) masks with bools.
        mask_dtype = query.dtype if softcap is None and sinks is None else None
        if metadata.decodes:
            k_buf, v_buf = _gather_buffers(metadata, flat_k)
            # GQA without repeating K/V: the query heads sharing a KV head act as
            # that head's "query positions".
            group = query.shape[1] // num_kv_heads
            # Query head h = kv_head * group + g sits at [kv_head, g] here.
            decode_sinks = None if sinks is None else sinks.view(num_kv_heads, group, 1)
            for g in metadata.decodes:
                n, length = g.end - g.start, g.length
                k = torch.index_select(flat_k, 0, g.slots, out=k_buf[: n * length])
                v = torch.index_select(flat_v, 0, g.slots, out=v_buf[: n * length])
                k, v = read(k, kv_scales.k), read(v, kv_scales.v)
                k = k.view(n, length, num_kv_heads, head_dim).transpose(1, 2)  # [n, KVH, L, D]
                v = v.view(n, length, num_kv_heads, head_dim).transpose(1, 2)
                q = query[g.start : g.end].view(n, num_kv_heads, group, head_dim)
                mask = metadata.sdpa_mask(g.mask, mask_dtype)
                o = attend(q, k, v, scale, softcap, decode_sinks, mask=mask)
                out[g.start : g.end] = o.reshape(n, -1, head_dim)
        head_sinks = None if sinks is None else sinks.view(-1, 1, 1)
        for p in metadata.prefills:
            rows = slice(p.start, p.end)
            if p.kv_slots is None:
                # [count, heads, q_len, D]: equal-length chunks batched (causal but for an
                # encoder's).
                q_len = (p.end - p.start) // p.count
                q, k, v = (
                    t[rows].view(p.count, q_len, *t.shape[1:]).transpose(1, 2)
                    for t in (query, key, value)
                )
                o = attend(q, k, v, scale, softcap, head_sinks, causal=metadata.causal)
                out[rows] = o.transpose(1, 2).reshape(p.end - p.start, *query.shape[1:])
            else:
                # [1, H, Q, D]: with a batch dimension SDPA takes its fused CPU kernel for
                # the masked case; as [H, Q, D] it ran the 3x slower unfused one.
                q = query[rows].transpose(0, 1)[None]
                k = read(flat_k[p.kv_slots], kv_scales.k).transpose(0, 1)[None]
                v = read(flat_v[p.kv_slots], kv_scales.v).transpose(0, 1)[None]
                mask = metadata.sdpa_mask(p.mask, mask_dtype)
                o = attend(q, k, v, scale, softcap, head_sinks, mask=mask)
                out[rows] = o[0].transpose(0, 1)
        return out


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    softcap: float | None,
    sinks: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """Attention over [..., heads, Q, D] queries and [..., kv_heads, K, D] keys/values;
    `mask` True where a key is seen. SDPA where it can; with a soft-cap or sinks (which
    SDPA cannot apply) in explicit steps, as HF's eager Gemma 2 and gpt-oss attention
    order them: scores scaled (squashed), masked, each head's sink logit (`sinks`,
    shaped to broadcast against the scores' [..., Q, 1]) joined as one more column, a
    softmax, and the sink's column dropped, all in fp32 (as the Triton kernels keep
    them), whose weights are rounded to the value dtype for P @ V."""
    grouped = q.shape[-3] != k.shape[-3]
    if softcap is None and sinks is None:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=grouped
        )
    if grouped:
        group = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(group, dim=-3), v.repeat_interleave(group, dim=-3)
    q_len, k_len = q.shape[-2], k.shape[-2]
    if causal:
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).tril(k_len - q_len)
    # The [..., Q, K] fp32 scores are the big tensor here: a few query rows at a time
    # (a long prefill chunk over a long context would otherwise take gigabytes).
    rows = max(1, EXPLICIT_SCORES_BYTES // (4 * k_len * max(1, q[..., :1, :1].numel())))
    out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=v.dtype, device=q.device)
    keys = k.float().transpose(-1, -2)
    for start in range(0, q_len, rows):
        part = slice(start, start + rows)
        scores = torch.matmul(q[..., part, :].float(), keys)
        if softcap is None:
            scores.mul_(scale)
        else:
            scores.mul_(scale / softcap).tanh_().mul_(softcap)
        if mask is not None:
            seen = mask if mask.shape[-2] == 1 else mask[..., part, :]
            scores.masked_fill_(~seen, float("-inf"))
        if sinks is None:
            probs = torch.softmax(scores, dim=-1)
        else:
            sink = sinks if sinks.shape[-2] == 1 else sinks[..., part, :]
            sink = sink.float().expand(*scores.shape[:-1], 1)
            probs = torch.softmax(torch.cat((scores, sink), dim=-1), dim=-1)[..., :-1]
        out[..., part, :] = torch.matmul(probs.to(v.dtype), v)
    return out


def _gather_buffers(
    metadata: TorchAttentionMetadata, flat_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V gather targets big enough for the step's largest decode group."""
    key = (flat_cache.dtype, flat_cache.shape[1], flat_cache.shape[2])
    buffers = metadata.gather_buffers.get(key)
    if buffers is None:
        rows = max(g.slots.shape[0] for g in metadata.decodes)
        shape = (rows, *flat_cache.shape[1:])
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
    scales: KvScales = UNIT_SCALES,
) -> None:
    """Write each new token's K and V at its slot in the paged cache (torch reference);
    into an FP8 cache as their codes under the layer's `scales`."""
    num_kv_heads, head_dim = key_cache.shape[2], key_cache.shape[3]
    for cache, new, scale in ((key_cache, key, scales.k), (value_cache, value, scales.v)):
        stored = quantize_kv(new, cache.dtype, scale)
        if is_fp8(cache.dtype):  # index_copy_ has no float8 kernels: copy the bytes
            cache, stored = cache.view(torch.uint8), stored.view(torch.uint8)
        cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, stored)
