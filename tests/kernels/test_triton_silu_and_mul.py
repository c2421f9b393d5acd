"""Triton SiLU-and-mul against kernels.silu_and_mul."""

from __future__ import annotations

import pytest
import torch

from kernels.silu_and_mul import silu_and_mul as torch_silu_and_mul
from kernels.triton_silu_and_mul import silu_and_mul

from .tolerances import DTYPES, assert_close


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [64, 100, 1536])  # 1536: several column tiles per row
def test_silu_and_mul_matches_torch(device: torch.device, dtype: torch.dtype, size: int) -> None:
    gen = torch.Generator().manual_seed(size)
    gate_up = (3 * torch.randn(5, 2 * size, generator=gen)).to(device, dtype)
    assert_close(silu_and_mul(gate_up), torch_silu_and_mul(gate_up))
