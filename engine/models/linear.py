"""A linear layer whose weight layout belongs to the kernels, not to the model.

It loads like `nn.Linear` (a plain [out, in] `weight` parameter, optional
`bias`), then `pack()` hands the weight to the ops' `LinearMethod`, which may
reorder it into a backend's own layout (oneDNN's blocked layout on CPU). The
packed form replaces the plain one, so packing costs no extra memory.

An FP8 checkpoint's projection can instead stay FP8 (`keep_fp8`, before the
weights are allocated): `weight` is then its e4m3 bits (uint8) beside
`weight_scale_inv`, one fp32 scale per tile as the checkpoint names it, and
the backend's FP8 matmul multiplies them (kernels/fp8.py). A packed-integer
checkpoint's projection can likewise stay packed (`keep_int`): `weight` is then
its int32 words beside `weight_scale` and `weight_zero` per group and the
`weight_groups` of its input columns (kernels/packed_int.py).
"""

from __future__ import annotations

import torch
from torch import nn

from engine.models.lora import LoRALayer
from kernels import fp8, packed_int
from kernels.fp8 import Fp8Block, empty_fp8
from kernels.fused_ops import Fp8Linear, IntLinear
from kernels.linear import LinearMethod
from kernels.packed_int import PackedInt, empty_packed

# Linear layers the model multiplies outside their forward: the LM head's weight is read
# by compute_logits (tied or not), so a quantized one is dequantized as it loads.
NOT_CALLED = frozenset({"lm_head"})
# A fused projection's checkpoint parts, in the order the fusion stacks their rows.
FUSED_PARTS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


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
        # Set when the weight stays FP8: its tiles and the backend's FP8 matmul.
        self.fp8_block: Fp8Block | None = None
        self.fp8_linear: Fp8Linear | None = None
        # Set when the weight stays packed integers: their width and the backend's matmul.
        self.int_bits: int | None = None
        self.int_group_size = 0
        self.int_linear: IntLinear | None = None

    def keep_fp8(self, block: Fp8Block, fp8_linear: Fp8Linear) -> None:
        """Hold the weight as FP8 (bytes and tile scales, allocated empty): on the meta
        device for a checkpoint's FP8 weights to load into, or after loading for
        --quantization fp8 to fill (engine/online_fp8.py)."""
        shape = (self.out_features, self.in_features)
        values, scales = empty_fp8(shape, block, self.weight.device)
        self.weight = nn.Parameter(values, requires_grad=False)
        self.weight_scale_inv = nn.Parameter(scales, requires_grad=False)
        self.fp8_block, self.fp8_linear = block, fp8_linear

    def keep_int(self, bits: int, group_count: int, group_size: int, int_linear: IntLinear) -> None:
        """Hold the weight as packed integer codes (allocated empty, on the meta device,
        for a checkpoint's codes to load into; `weight_groups` is set after, numbering
        runs of `group_size` columns unless that is 0: kernels/packed_int.py)."""
        shape = (self.out_features, self.in_features)
        codes, scales, zeros, groups = empty_packed(shape, bits, group_count, self.weight.device)
        self.weight = nn.Parameter(codes, requires_grad=False)
        self.weight_scale = nn.Parameter(scales, requires_grad=False)
        self.weight_zero = nn.Parameter(zeros, requires_grad=False)
        self.register_buffer("weight_groups", groups)
        self.int_bits, self.int_group_size, self.int_linear = bits, group_size, int_linear

    def pack(self) -> None:
        """Swap the loaded weight for the method's layout; call once, after loading."""
        if self.packed or self.fp8_block is not None or self.int_bits is not None:
            return
        plain = self.weight.detach()
        packed = self.method.pack(plain)
        if packed is not plain:
            del self.weight
            self.register_buffer("weight", packed, persistent=False)
        self.packed = True

    def scratch_bytes(self, dtype: torch.dtype, max_rows: int) -> int:
        """The dequantized copy this layer makes for inputs past its quantized GEMM's rows
        (kernels/triton_fp8_linear.py, kernels/triton_int_linear.py), when a step can
        have `max_rows`: 0 for a plain weight or a step within the GEMM's rows."""
        if self.fp8_block is not None:
            limit = fp8.FP8_GEMM_MAX_ROWS
        elif self.int_bits is not None:
            limit = packed_int.INT_GEMM_MAX_ROWS
        else:
            return 0
        itemsize = torch.empty((), dtype=dtype).element_size()
        return self.out_features * self.in_features * itemsize if max_rows > limit else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp8_linear is not None and self.fp8_block is not None:
            out = self.fp8_linear(x, self.weight, self.weight_scale_inv, self.fp8_block, self.bias)
        elif self.int_linear is not None and self.int_bits is not None:
            packed = PackedInt(
                self.weight,
                self.weight_scale,
                self.weight_zero,
                self.weight_groups,
                self.int_bits,
                self.int_group_size,
            )
            out = self.int_linear(x, packed, self.bias)
        else:
            out = self.method.apply(x, self.weight, self.bias)
        if self.lora is not None:
            self.lora.add_to(out, x)
        return out

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, method={self.method.name}, packed={self.packed}, "
            f"fp8={self.fp8_block}, int_bits={self.int_bits}"
        )


def scratch_bytes(model: nn.Module, dtype: torch.dtype, max_rows: int) -> int:
    """The largest dequantized copy a quantized projection makes (`Linear.scratch_bytes`):
    memory to keep free of the KV cache, as one layer runs at a time."""
    sizes = [m.scratch_bytes(dtype, max_rows) for m in model.modules() if isinstance(m, Linear)]
    return max(sizes, default=0)
