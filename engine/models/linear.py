"""A linear layer whose weight layout belongs to the kernels, not to the model.

It loads like `nn.Linear` (a plain [out, in] `weight` parameter, optional
`bias`), then `pack()` hands the weight to the ops' `LinearMethod`, which may
reorder it into a backend's own layout (oneDNN's blocked layout on CPU). The
packed form replaces the plain one, so packing costs no extra memory.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.models.lora import LoRALayer
from kernels.linear import LinearMethod


class Linear(nn.Module):
    def __init__(
        self, in_features: int, out_features: int, bias: bool, method: LinearMethod
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.method = method
        self.packed = False
        # LoRA adapters' updates of this projection, when the engine serves any.
        self.lora: LoRALayer | None = None

    def pack(self) -> None:
        """Swap the loaded weight for the method's layout; call once, after loading."""
        if self.packed:
            return
        plain = self.weight.detach()
        packed = self.method.pack(plain)
        if packed is not plain:
            del self.weight
            self.register_buffer("weight", packed, persistent=False)
        self.packed = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.method.apply(x, self.weight, self.bias)
        if self.lora is not None:
            self.lora.add_to(out, x)
        return out

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, method={self.method.name}, packed={self.packed}"
        )
