"""Triton GELU(tanh)-and-mul against kernels.gelu_tanh_and_mul."""

from __future__ import annotations

import pytest
import torch

from kernels.gelu_tanh_and_mul import gelu_tanh_and_mul as torch_gelu_tanh_and_mul
from kernels.triton_gelu_tanh_and_mul import gelu_tanh_and_mul

from .tolerances import DTYPES, assert_close


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [64, 100, 1536])  # 1536: several column tiles per row
def test_gelu_tanh_and_mul_matches_torch(
    device: torch.device, dtype: torch.dtype, size: int
) -> None:
    gen = torch.Generator().manual_seed(size)
    # Wide enough that tanh saturates at both ends (|y| > 5 from |x| > 4).
    gate_up = (4 * torch.randn(5, 2 * size, generator=gen)).to(device, dtype)
    assert_close(gelu_tanh_and_mul(gate_up), torch_gelu_tanh_and_mul(gate_up))
