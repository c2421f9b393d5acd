"""A mean-centred LayerNorm with the residual add before it, taking and returning what
the models' RMSNorm does, `(normalised, sum)`, so decoder layers wire either the same.

Cohere's has a weight only and computes in fp32 (as transformers' CohereLayerNorm);
StarCoder2's is torch's own `nn.LayerNorm`, with a bias, in the input's dtype.
Command R+ norms each query and key head the Cohere way with a weight per head
(`HeadLayerNorm`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional


class LayerNorm(nn.Module):
    def __init__(self, size: int, eps: float, bias: bool = False, fp32: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size)) if bias else None
        self.eps = eps
        self.fp32 = fp32

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is not None:
            x = residual + x
        if not self.fp32:
            return functional.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps), x
        bias = None if self.bias is None else self.bias.float()
        normed = functional.layer_norm(x.float(), x.shape[-1:], self.weight.float(), bias, self.eps)
        return normed.to(x.dtype), x


class HeadLayerNorm(nn.Module):
    """Command R+'s query/key norm: each head [tokens, heads, head_dim] mean-centred and
    scaled over its head_dim in fp32, times that head's own weights ([heads, head_dim],
    as the checkpoint stores them), rounded once (transformers' CohereLayerNorm given a
    (heads, head_dim) size)."""

    def __init__(self, heads: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(heads, head_dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        normed = functional.layer_norm(x.float(), x.shape[-1:], None, None, self.eps)
        return (normed * self.weight.float()).to(x.dtype), x
