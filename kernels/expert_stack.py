"""A stack of expert matrices [E, N, K] as the experts ops take it: plain or quantized.

Plain (a tensor in the model's dtype), MXFP4 (gpt-oss's release:
kernels/mxfp4.py), block-scaled FP8 (DeepSeek's and Qwen's `-FP8` MoE
releases: kernels/fp8.py) or packed integers (GPTQ and AWQ MoE releases:
kernels/packed_int.py). The Triton grouped GEMM decodes quantized tiles as
it reads them; the torch loop dequantizes one expert at a time, as it runs it.
"""

from __future__ import annotations

import torch

from kernels.fp8 import Fp8Experts
from kernels.mxfp4 import Mxfp4Weight
from kernels.packed_int import IntExperts

ExpertStack = torch.Tensor | Mxfp4Weight | Fp8Experts | IntExperts


def expert_matrix(stack: ExpertStack, expert: int, dtype: torch.dtype) -> torch.Tensor:
    """One expert's [N, K] matrix in `dtype` (plain stacks: as stored)."""
    if isinstance(stack, Mxfp4Weight | Fp8Experts | IntExperts):
        return stack.expert(expert, dtype)
    return stack[expert]
