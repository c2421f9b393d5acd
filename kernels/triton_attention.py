"""AttentionBackend over the Triton kernels: store_kv, then decode and prefill attention.

`prepare` turns the step into int32 block tables, context lengths and query
offsets on the device once; every layer's `forward` is then three kernel
launches at most (store_kv, decode, prefill), plus a combine kernel when a
decode context spans several partitions. The fused ops it carries run the
model's RMSNorm, rotary, SiLU/GELU/clamped-SwiGLU-and-mul and mixture-of-experts MLPs as
Triton kernels too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.attention import AttentionInputs, block_table_tensor
from kernels.fused_ops import FusedOps
from kernels.kv_cache_dtype import UNIT_SCALES, KvScales
from kernels.triton_clamped_swiglu_and_mul import clamped_swiglu_and_mul
from kernels.triton_decode_attention import (
    PARTITION_SIZE,
    DecodeBatch,
    decode_attention,
    make_decode_batch,
)
from kernels.triton_experts import fused_experts
from kernels.triton_fp8_linear import fp8_linear
from kernels.triton_gelu_tanh_and_mul import gelu_tanh_and_mul
from kernels.triton_int_linear import int_linear
from kernels.triton_prefill_attention import PrefillBatch, make_prefill_batch, prefill_attention
from kernels.triton_rms_norm import rms_norm
from kernels.triton_rotary import apply_rotary
from kernels.triton_silu_and_mul import silu_and_mul
from kernels.triton_store_kv import store_kv
from kernels.triton_support import triton_unavailable_reason

TRITON_OPS = FusedOps(
    "triton",
    rms_norm,
    apply_rotary,
    silu_and_mul,
    gelu_tanh_and_mul,
    clamped_swiglu_and_mul=clamped_swiglu_and_mul,
    experts=fused_experts,
    experts_sync_free=True,
    experts_mxfp4=True,
    experts_fp8=True,
    experts_int=True,
    fp8_linear=fp8_linear,
    int_linear=int_linear,
)


@dataclass(frozen=True)
class TritonAttentionMetadata:
    slot_mapping: torch.Tensor
    num_decodes: int
    decode: DecodeBatch | None
    prefill: PrefillBatch | None


class TritonAttentionBackend:
    """AttentionBackend whose every op is a Triton kernel (kernels/triton_*.py)."""

    name = "triton"
    ops = TRITON_OPS

    def __init__(self, device: torch.device, partition_size: int = PARTITION_SIZE) -> None:
        reason = triton_unavailable_reason(device)
        if reason is not None:
            raise RuntimeError(f"attention backend 'triton' cannot run: {reason}")
        self.device = device
        self.partition_size = partition_size

    def prepare(self, inputs: AttentionInputs) -> TritonAttentionMetadata:
        nd = inputs.num_decodes
        tables = block_table_tensor(
            inputs.block_tables, inputs.context_lens, inputs.block_size, self.device
        )
        decode = prefill = None
        if nd:
            decode = make_decode_batch(tables[:nd], inputs.context_lens[:nd], self.partition_size)
        if nd < len(inputs.query_lens):
            prefill = make_prefill_batch(
                tables[nd:], inputs.query_lens[nd:], inputs.context_lens[nd:], inputs.causal
            )
        return TritonAttentionMetadata(inputs.slot_mapping, nd, decode, prefill)

    def graph_context_caps(self, max_model_len: int) -> list[int]:
        """Longest contexts to record decode graphs for: 1, 4, 16, ... partitions.

        A graph launches every partition its cap needs, and those past a sequence's
        context exit at once; at batch 256 x 32 heads, 16 partitions of which one is
        used would launch 120k idle programs per layer. A few caps bound that waste
        to 4x while keeping the number of recordings small.
        """
        caps = []
        parts = 1
        while parts * self.partition_size < max_model_len:
            caps.append(parts * self.partition_size)
            parts *= 4
        return [*caps, max_model_len]

    def graph_metadata(
        self,
        slot_mapping: torch.Tensor,
        block_tables: torch.Tensor,
        context_lens: torch.Tensor,
        max_context_len: int,
    ) -> TritonAttentionMetadata:
        """A decode-only step read from static device buffers (engine/decode_graphs.py).

        Nothing here reads the buffers' values, so a recorded graph replays with new
        ones: the partition count covers `max_context_len`, and partitions past a
        sequence's own context exit at once.
        """
        parts = -(-max_context_len // self.partition_size)
        decode = DecodeBatch(block_tables, context_lens, parts, self.partition_size)
        return TritonAttentionMetadata(slot_mapping, slot_mapping.shape[0], decode, None)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        metadata: TritonAttentionMetadata,
        scale: float,
        window: int | None = None,
        softcap: float | None = None,
        sinks: torch.Tensor | None = None,
        kv_scales: KvScales = UNIT_SCALES,
    ) -> torch.Tensor:
        store_kv(key, value, key_cache, value_cache, metadata.slot_mapping, kv_scales)
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
        nd = metadata.num_decodes
        if metadata.decode is not None:
            decode_attention(
                query[:nd],
                key_cache,
                value_cache,
                metadata.decode,
                scale,
                out[:nd],
                window,
                softcap,
                sinks,
                kv_scales,
            )
        if metadata.prefill is not None:
            prefill_attention(
                query[nd:],
                key_cache,
                value_cache,
                metadata.prefill,
                scale,
                out[nd:],
                window=window,
                softcap=softcap,
                sinks=sinks,
                kv_scales=kv_scales,
            )
        return out
