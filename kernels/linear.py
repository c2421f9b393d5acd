"""How a model's linear layers multiply: the weight layout and the matmul that reads it.

On CPU, decode is a stream of skinny matmuls (a few rows against every
weight), bound by how fast the weights are read. MKL's sgemm behind
`F.linear` reads a [out, in] fp32 weight at about a third of this machine's
memory bandwidth when M is small; oneDNN's matmul over a weight reordered
once into its blocked layout reads it at nearly full bandwidth and is faster
at every batch size we measured (1 to 256 rows); on a 2-core AVX2 EPYC it
still reads the 49152x576 lm_head 1.7x faster at one row, 1.4x at 64. So on
CPU the weights are packed once after loading and multiplied by oneDNN;
everywhere else (CUDA: cuBLAS) `F.linear` on the plain weight is already
right.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F

# oneDNN picks its blocked layout for a batch size; 64 rows gave the fastest
# layout for every M from 1 to 256 on the 2-core AVX-512 box (see benchmarks).
_ONEDNN_BATCH_HINT = 64


@dataclass(frozen=True)
class LinearMethod:
    """pack: weight [out, in] -> the form `apply` reads (done once, after loading).
    apply: (x [M, in], packed weight, bias [out] or None) -> [M, out]."""

    name: str
    pack: Callable[[torch.Tensor], torch.Tensor]
    apply: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def _keep(weight: torch.Tensor) -> torch.Tensor:
    return weight


TORCH_LINEAR = LinearMethod("torch", _keep, F.linear)


def onednn_linear_available() -> bool:
    """oneDNN's packed matmul exists in this torch build (x86 CPU builds have it)."""
    return torch.backends.mkldnn.is_available() and hasattr(
        torch.ops.mkldnn, "_reorder_linear_weight"
    )


@cache
def onednn_packable_dtypes() -> tuple[torch.dtype, ...]:
    """The weight dtypes oneDNN can reorder on this CPU: bfloat16 needs AVX-512
    (BW/VL/DQ) or AVX-NE-CONVERT, and torch raises on a plain AVX2 machine."""
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return (torch.float32, torch.bfloat16)
    return (torch.float32,)


def pack_onednn(weight: torch.Tensor) -> torch.Tensor:
    """Reorder a CPU weight into oneDNN's blocked layout; other weights (and dtypes
    this CPU cannot pack) stay as they are and go through `F.linear`."""
    if weight.device.type != "cpu" or weight.dtype not in onednn_packable_dtypes():
        return weight
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _ONEDNN_BATCH_HINT)


def onednn_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x @ weight.T + bias, by oneDNN when `weight` was packed, else by `F.linear`."""
    if not weight.is_mkldnn:
        return F.linear(x, weight, bias)
    if x.dim() != 2:
        return onednn_linear(x.reshape(-1, x.shape[-1]), weight, bias).view(
            *x.shape[:-1], weight.shape[0]
        )
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


ONEDNN_LINEAR = LinearMethod("onednn", pack_onednn, onednn_linear)


def linear_method_for(device: torch.device) -> LinearMethod:
    """oneDNN on CPU where torch has it, `F.linear` everywhere else."""
    if device.type == "cpu" and onednn_linear_available():
        return ONEDNN_LINEAR
    return TORCH_LINEAR
