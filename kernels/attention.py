"""The attention backend interface: how a model layer reaches the paged KV cache.

The model runner describes a step once (`AttentionInputs`); the backend turns
that into whatever per-step metadata it needs (`prepare`, called once per
step, not per layer) and then, in every layer, writes the new keys/values into
the cache and attends over it (`forward`). Models only ever call
`forward`, so a Triton backend slots in without touching them. A backend also
carries the fused ops (RMSNorm, rotary, SiLU-and-mul) a model is built with,
so attention and the other kernels are chosen together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from kernels.fused_ops import FusedOps
from kernels.kv_cache_dtype import UNIT_SCALES, KvScales


@dataclass(frozen=True)
class AttentionInputs:
    """One step's flattened batch, as the model runner laid it out.

    Sequences with a single new token come first (`num_decodes` of them), so a
    backend can treat them as one batched decode; the rest are prefill chunks.
    """

    query_lens: list[int]
    context_lens: list[int]
    block_tables: list[list[int]]
    slot_mapping: torch.Tensor
    num_decodes: int
    block_size: int
    # The window every layer attends within, where all of them slide (their blocks behind
    # it may be given back): a backend need not prepare for whole-context attention.
    every_layer_window: int | None = None
    # False for an encoder (BERT): each query sees its whole sequence, not only the keys
    # before it. Its prompts come whole (no cached prefix, no chunks), so a prompt of one
    # token, laid out as a decode, sees the same keys either way.
    causal: bool = True

    @property
    def num_tokens(self) -> int:
        return int(self.slot_mapping.shape[0])


def block_table_tensor(
    tables: list[list[int]], context_lens: list[int], block_size: int, device: torch.device
) -> torch.Tensor:
    """[N, max_blocks] int32, each row the blocks its context uses, zero-padded.

    The form kernels read block tables in (the Triton backend, decode graphs).
    """
    used = [-(-ctx // block_size) for ctx in context_lens]
    width = max(used, default=0) or 1
    rows = [table[:n] + [0] * (width - n) for table, n in zip(tables, used, strict=True)]
    return torch.tensor(rows, dtype=torch.int32).to(device, non_blocking=True)


class AttentionBackend(Protocol):
    """What a model layer calls; see the module docstring."""

    name: str
    ops: FusedOps

    def prepare(self, inputs: AttentionInputs) -> Any:
        """Build per-step metadata once; the result is passed to every layer's `forward`."""
        ...

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        metadata: Any,
        scale: float,
        window: int | None = None,
        softcap: float | None = None,
        sinks: torch.Tensor | None = None,
        kv_scales: KvScales = UNIT_SCALES,
    ) -> torch.Tensor:
        """Store `key`/`value` ([T, kv_heads, D]) and attend `query` ([T, heads, D]).

        Caches are [num_blocks, block_size, kv_heads, D]. Returns [T, heads, D].
        `window` (a sliding-window layer's): a query at position p sees only the keys
        at p - window + 1 ... p, as HF's sliding-window mask allows. `softcap`
        (Gemma 2's): each scaled score s becomes softcap * tanh(s / softcap) before
        the softmax. `sinks` ([heads] fp32, gpt-oss's): each head's learned logit joins
        its softmax as a key with no value, so a head may attend to nothing.
        Caches of an FP8 dtype hold codes of key / `kv_scales.k` and value /
        `kv_scales.v` (kernels/kv_cache_dtype.py), the layer's scales.
        """
        ...
