"""Interleaved rotary embeddings (GLM's GPT-J style) run by the engine's half-split kernels.

GLM-4 rotates each head's dimensions in adjacent pairs, (x0, x1), (x2, x3), ...,
where the rotary kernels (torch and Triton) pair dimension i with i + d/2, as
Llama does. Attention scores are dot products within a head, unchanged when
queries and keys list their dimensions in another order, so the loader reorders
the query and key projections' rows once, evens first, then odds, within each
head's rotated part: pair (2i, 2i + 1) becomes (i, i + d/2), which the kernels
rotate by the same frequency i. Values, and so outputs, keep their order. A
LoRA adapter's B rows for those projections are reordered the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch

# A packed-integer layer kept packed (engine/int_linears.py) has a row of codes, scales
# and zeros per output channel: all three reorder as a weight does.
_QUERY_KEY = re.compile(r"\.self_attn\.(q_proj|k_proj)\.(weight|weight_scale|weight_zero|bias)$")
# Command R+'s per-head query/key norm weights ([heads, head_dim]): each head's weights
# follow its dimensions.
_QUERY_KEY_NORM = re.compile(r"\.self_attn\.(q_norm|k_norm)\.weight$")


def half_split_order(head_dim: int, rotary_dim: int) -> torch.Tensor:
    """Each head's new row order: the rotated part's even dimensions, its odd ones, then
    the dimensions that do not turn."""
    rotated = rotary_dim or head_dim
    return torch.cat(
        (
            torch.arange(0, rotated, 2),
            torch.arange(1, rotated, 2),
            torch.arange(rotated, head_dim),
        )
    )


def half_split_rows(tensor: torch.Tensor, head_dim: int, rotary_dim: int) -> torch.Tensor:
    """A query or key projection's weight (rows: heads x head_dim) or bias with each
    head's rows in half-split order."""
    if tensor.shape[0] % head_dim:
        raise ValueError(f"{tuple(tensor.shape)} rows are not whole heads of {head_dim}")
    heads = tensor.reshape(tensor.shape[0] // head_dim, head_dim, *tensor.shape[1:])
    order = half_split_order(head_dim, rotary_dim).to(tensor.device)
    return heads.index_select(1, order).reshape(tensor.shape).contiguous()


def half_split_checkpoint(
    weights: Iterable[tuple[str, torch.Tensor]], head_dim: int, rotary_dim: int
) -> Iterator[tuple[str, torch.Tensor]]:
    """A checkpoint's tensors with its query and key projections' rows reordered."""
    for name, tensor in weights:
        if _QUERY_KEY.search(name):
            tensor = half_split_rows(tensor, head_dim, rotary_dim)
        elif _QUERY_KEY_NORM.search(name):
            flat = half_split_rows(tensor.reshape(-1), head_dim, rotary_dim)
            tensor = flat.reshape(tensor.shape)
        yield name, tensor
