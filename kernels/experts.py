"""A mixture-of-experts layer's expert MLPs, given the router's choices (torch path).

Every (token, slot) pair is grouped by expert with one sort, and each expert
runs once over the tokens routed to it, in expert order as transformers adds
them, so greedy output matches it bit for bit. Which experts a step uses is
known only on the host (one sync per call: the group sizes), so a model on
this path decodes eagerly. The reference for kernels/triton_experts.py.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from kernels.expert_stack import ExpertStack, expert_matrix


def experts(
    x: torch.Tensor,
    gate_up: ExpertStack,
    down: ExpertStack,
    weights: torch.Tensor,
    chosen: torch.Tensor,
    act_and_mul: Callable[[torch.Tensor], torch.Tensor],
    gate_up_bias: torch.Tensor | None = None,
    down_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [T, H]; gate_up [E, 2I, H] and down [E, H, I] stacked per expert; weights and
    chosen [T, K]: each token's experts and how much each counts. -> [T, H] in x's dtype.
    The weighted product is taken in the weights' dtype (Mixtral: fp32) and rounded once.
    Biases ([E, 2I] and [E, H], gpt-oss's) are added after each matmul, as transformers
    adds them. Quantized stacks (MXFP4, FP8) are dequantized an expert at a time."""
    top_k = chosen.shape[1]
    out = torch.zeros_like(x)
    flat = chosen.flatten()
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=gate_up.shape[0]).tolist()
    start = 0
    for expert, count in enumerate(counts):
        if not count:
            continue
        picks = order[start : start + count]
        start += count
        tokens, slot = picks // top_k, picks % top_k
        h = F.linear(x[tokens], expert_matrix(gate_up, expert, x.dtype))
        if gate_up_bias is not None:
            h = h + gate_up_bias[expert]
        h = F.linear(act_and_mul(h), expert_matrix(down, expert, x.dtype))
        if down_bias is not None:
            h = h + down_bias[expert]
        h = h * weights[tokens, slot, None]
        out.index_add_(0, tokens, h.to(x.dtype))
    return out
