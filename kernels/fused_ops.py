"""The non-attention ops a model calls, chosen together with the attention backend.

A model is built with one `FusedOps` and calls only its functions, so model
files never name a kernel. Binding happens once, at build time: the torch
path calls the very same functions as before, with no dispatch per call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from kernels.clamped_swiglu_and_mul import clamped_swiglu_and_mul
from kernels.expert_stack import ExpertStack
from kernels.experts import experts
from kernels.fp8 import Fp8Block
from kernels.gelu_tanh_and_mul import gelu_tanh_and_mul
from kernels.linear import TORCH_LINEAR, LinearMethod
from kernels.packed_int import PackedInt
from kernels.rms_norm import rms_norm
from kernels.rotary import apply_rotary
from kernels.silu_and_mul import silu_and_mul

RmsNorm = Callable[
    [torch.Tensor, torch.Tensor, float, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]
]
ActAndMul = Callable[[torch.Tensor], torch.Tensor]
# gate_up, alpha, limit -> the clamped SwiGLU's product (gpt-oss).
ClampedSwigluAndMul = Callable[[torch.Tensor, float, float], torch.Tensor]
# x, e4m3 values (uint8), tile scales, tile, bias -> x @ W.T + bias (kernels/fp8.py's format).
Fp8Linear = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, Fp8Block, torch.Tensor | None], torch.Tensor
]

# x, packed integer weight, bias -> x @ W.T + bias (kernels/packed_int.py's format).
IntLinear = Callable[[torch.Tensor, PackedInt, torch.Tensor | None], torch.Tensor]


class Experts(Protocol):
    """A mixture-of-experts layer's expert MLPs (kernels/experts.py's contract)."""

    def __call__(
        self,
        x: torch.Tensor,
        gate_up: ExpertStack,
        down: ExpertStack,
        weights: torch.Tensor,
        chosen: torch.Tensor,
        act_and_mul: ActAndMul,
        gate_up_bias: torch.Tensor | None = None,
        down_bias: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class FusedOps:
    """rms_norm: see kernels/rms_norm.py. apply_rotary: returns the rotated tensor,
    which may be its input rotated in place. silu_and_mul: see kernels/silu_and_mul.py;
    gelu_tanh_and_mul (Gemma's MLP): kernels/gelu_tanh_and_mul.py;
    clamped_swiglu_and_mul (gpt-oss's experts): kernels/clamped_swiglu_and_mul.py. experts: a
    mixture-of-experts layer's expert MLPs (kernels/experts.py); `experts_sync_free`
    when they need no host sync (decodes may then replay CUDA graphs); `experts_mxfp4`
    when they multiply MXFP4 weights without dequantizing them whole (an MXFP4
    checkpoint's experts then stay MXFP4 in memory; kernels/mxfp4.py); `experts_fp8` the
    same for block-scaled FP8 stacks (kernels/fp8.py's Fp8Experts), `experts_int` for
    packed integer ones (kernels/packed_int.py's IntExperts). fp8_linear: a
    linear layer on block-scaled FP8 weights (kernels/fp8.py), where the backend has
    one: an FP8 checkpoint's projections then stay FP8 in memory. int_linear: the
    same for packed integer weights (GPTQ, AWQ, W4A16: kernels/packed_int.py). linear: how
    the model's weights are laid out and multiplied (kernels/linear.py)."""

    name: str
    rms_norm: RmsNorm
    apply_rotary: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    silu_and_mul: ActAndMul
    gelu_tanh_and_mul: ActAndMul
    clamped_swiglu_and_mul: ClampedSwigluAndMul = clamped_swiglu_and_mul
    experts: Experts = experts
    experts_sync_free: bool = False
    experts_mxfp4: bool = False
    experts_fp8: bool = False
    experts_int: bool = False
    fp8_linear: Fp8Linear | None = None
    int_linear: IntLinear | None = None
    linear: LinearMethod = TORCH_LINEAR


TORCH_OPS = FusedOps("torch", rms_norm, apply_rotary, silu_and_mul, gelu_tanh_and_mul)
