"""Triton RMSNorm (plain and with the fused residual add) against kernels.rms_norm."""

from __future__ import annotations

import pytest
import torch

from kernels.rms_norm import rms_norm as torch_rms_norm
from kernels.triton_rms_norm import rms_norm

from .tolerances import DTYPES, assert_close

EPS = 1e-5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 96, 576])
def test_fused_add_rms_norm_matches_torch(
    device: torch.device, dtype: torch.dtype, hidden: int
) -> None:
    gen = torch.Generator().manual_seed(hidden)
    x, residual = (torch.randn(7, hidden, generator=gen).to(device, dtype) for _ in range(2))
    weight = torch.randn(hidden, generator=gen).to(device, dtype)
    expected_residual = residual.clone()
    expected, _ = torch_rms_norm(x, weight, EPS, expected_residual)
    out, returned = rms_norm(x, weight, EPS, residual)
    # The residual stream is updated in place and handed back, as the torch op does.
    assert returned is residual
    assert_close(residual, expected_residual)
    assert_close(out, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_without_residual_matches_torch(device: torch.device, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 96, generator=gen).to(device, dtype)
    weight = torch.randn(96, generator=gen).to(device, dtype)
    before = x.clone()
    expected, _ = torch_rms_norm(x, weight, EPS)
    out, returned = rms_norm(x, weight, EPS)
    assert returned is x and torch.equal(x, before)
    assert_close(out, expected)
