"""A checkpoint's calibrated FP8 KV-cache scales, placed on the layers they belong to.

llm-compressor's `kv_cache_scheme` saves one scale for a layer's keys and one
for its values (`self_attn.k_scale`, `self_attn.v_scale`; older exports
`k_proj.output_scale`, `v_proj.output_scale`, or one `kv_scale` for both;
ModelOpt's `k_proj.k_scale`, `v_proj.v_scale`; vLLM's own `attn.k_scale`),
such that a cached key is code(key / k_scale). With --kv-cache-dtype fp8 the
engine caches with them (kernels/kv_cache_dtype.py); with a full-precision
cache they are loaded and unused. A scale per head (the `attn_head` strategy)
becomes the layer's largest: coarser for the other heads, never saturating.
"""

from __future__ import annotations

import re
from dataclasses import replace

import torch

from kernels.kv_cache_dtype import KvScales

_NAME = re.compile(
    r"layers\.(\d+)\.self_attn\."
    r"(?:(?:attn\.)?(k|v|kv)_scale|(k|v)_proj\.(?:output|\3)_scale)$"
)


def kv_scale_target(name: str) -> tuple[int, str] | None:
    """(layer index, "k" | "v" | "kv") for a KV-cache scale's model name, else None."""
    match = _NAME.search(name)
    if match is None:
        return None
    return int(match.group(1)), match.group(2) or match.group(3)


def with_scale(scales: KvScales, which: str, tensor: torch.Tensor) -> KvScales:
    """`scales` with the keys', the values' or both ("kv") replaced by `tensor`'s."""
    value = float(tensor.float().max())
    if which == "kv":
        return KvScales(value, value)
    return replace(scales, **{which: value})
