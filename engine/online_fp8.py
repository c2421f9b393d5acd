"""--quantization fp8: a full-precision checkpoint's projections quantized to FP8 as it loads.

vLLM's online FP8: after the weights are in, every linear layer but the LM
head (and every mixture-of-experts stack) becomes e4m3 with one fp32 scale per
row (kernels/fp8.py's `quantize_rows`), held as an FP8 checkpoint's weights
are: on the Triton backend as bytes its FP8 GEMMs read (half of bf16's weight
memory, a byte a weight read per decode step instead of two), on the torch
backend dequantized again into the model's dtype (the same numbers, bf16's
memory: that backend has no FP8 matmul), so both backends compute the same
model. Layers are converted one at a time and each a few rows at a time, so
loading peaks at the full-precision model plus one layer's codes and 64 MB of
fp32 work. Layers vLLM leaves in full precision stay so: the LM head (read by
the logits, not called) and Qwen2-MoE's one-output shared-expert gate. The
weights are W8A16: the activations stay in the model's dtype.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from engine.config import QUANTIZATION_METHODS
from engine.models.linear import NOT_CALLED, Linear
from engine.models.moe import SparseMoE
from kernels import fp8
from kernels.fp8 import Fp8Block
from kernels.fused_ops import FusedOps

logger = logging.getLogger(__name__)

# Linear layers left in full precision, by the last part of their name.
KEPT_FULL = frozenset({*NOT_CALLED, "shared_expert_gate"})


def wants_online_fp8(requested: str | None, checkpoint: str | None) -> bool:
    """Whether --quantization `requested` asks to quantize a checkpoint whose own
    quantization is `checkpoint` (engine/weight_quantization.py's method, None: full
    precision); naming the checkpoint's own method changes nothing, as in vLLM. An
    "fp8" checkpoint may hold no FP8 weights at all (a KV-cache scheme alone): the
    loader quantizes only a checkpoint without any (engine/model_runner.py)."""
    if requested is None:
        return False
    if requested not in QUANTIZATION_METHODS:
        raise ValueError(
            f"quantization: unsupported {requested!r}; use one of {list(QUANTIZATION_METHODS)}"
        )
    if checkpoint is None:
        if requested != "fp8":
            raise ValueError(
                f"quantization: {requested!r} names a checkpoint format, and this "
                "checkpoint is not quantized; --quantization fp8 quantizes it as it loads"
            )
        return True
    own = {
        "fp8": ("fp8", "compressed-tensors"),
        "mxfp4": ("mxfp4",),
        "int": ("compressed-tensors",),
        "gptq": ("gptq", "gptq_marlin"),
        "awq": ("awq", "awq_marlin"),
    }[checkpoint]
    if requested not in own:
        raise ValueError(
            f"quantization: {requested!r} does not match the checkpoint's own "
            f"{checkpoint} weights; leave --quantization out to serve them as they are"
        )
    return requested == "fp8" and checkpoint == "fp8"


def quantize_to_fp8(model: nn.Module, ops: FusedOps) -> None:
    """Quantize the loaded model's projections and expert stacks in place (see above)."""
    before = _weight_bytes(model)
    layers = experts = 0
    for name, module in model.named_modules():
        kept_full = name.rpartition(".")[2] in KEPT_FULL
        if isinstance(module, Linear) and not kept_full and module.fp8_block is None:
            _quantize_linear(module, ops)
            layers += 1
        elif isinstance(module, SparseMoE) and module.fp8_blocks is None:
            _quantize_experts(module, ops)
            experts += 1
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the full-precision copies' memory, for the KV cache
    logger.info(
        "--quantization fp8: %d linear layers and %d expert layers to FP8 (a scale per "
        "row), weights %.2f -> %.2f GB%s",
        layers,
        experts,
        before / 1e9,
        _weight_bytes(model) / 1e9,
        "" if ops.fp8_linear is not None else " (dequantized: this backend has no FP8 matmul)",
    )


def _quantize_linear(module: Linear, ops: FusedOps) -> None:
    weight = module.weight.detach()
    codes, scales = fp8.quantize_rows(weight)
    if ops.fp8_linear is None:
        with torch.no_grad():
            _dequantize_into(weight, codes, scales)
        return
    module.keep_fp8(Fp8Block(1, module.in_features), ops.fp8_linear)
    with torch.no_grad():
        module.weight.copy_(codes)
        module.weight_scale_inv.copy_(scales)


def _quantize_experts(module: SparseMoE, ops: FusedOps) -> None:
    """Expert by expert (a whole stack in fp32 would be gigabytes)."""
    stacks = {"gate_up": module.gate_up.detach(), "down": module.down.detach()}
    if ops.experts_fp8:
        module.keep_fp8(None)
    for name, stack in stacks.items():
        for expert in range(stack.shape[0]):
            codes, scales = fp8.quantize_rows(stack[expert])
            with torch.no_grad():
                if ops.experts_fp8:
                    getattr(module, name)[expert].copy_(codes)
                    getattr(module, f"{name}_scale_inv")[expert].copy_(scales)
                else:
                    _dequantize_into(stack[expert], codes, scales)


def _dequantize_into(weight: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> None:
    """weight[:] = codes * scales (kernels/fp8.py's `dequantize`, per row), a few rows at
    a time as they were quantized."""
    rows, cols = weight.shape
    block = Fp8Block(1, cols)
    for part in fp8.row_chunks(rows, cols):
        weight[part] = fp8.dequantize(codes[part], scales[part], block, weight.dtype)


def _weight_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())
