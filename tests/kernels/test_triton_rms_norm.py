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


@pytest.mark.parametrize("dtype", DTYPES)
def test_fp32_weights_weigh_before_rounding_as_torch_does(
    device: torch.device, dtype: torch.dtype
) -> None:
    """Gemma's norms keep `1 + w` in fp32 on a 16-bit stream."""
    gen = torch.Generator().manual_seed(2)
    x, residual = (torch.randn(6, 96, generator=gen).to(device, dtype) for _ in range(2))
    weight = (1 + 0.1 * torch.randn(96, generator=gen)).to(device)
    expected_residual = residual.clone()
    expected, _ = torch_rms_norm(x, weight, EPS, expected_residual)
    out, _ = rms_norm(x, weight, EPS, residual)
    assert out.dtype == dtype
    assert_close(residual, expected_residual)
    assert_close(out, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_torch_norm_with_fp32_weights_is_hfs_gemma_norm_bit_for_bit(dtype: torch.dtype) -> None:
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

    gen = torch.Generator().manual_seed(3)
    hf = Gemma3RMSNorm(96, eps=EPS)
    with torch.no_grad():
        hf.weight.copy_(0.3 * torch.randn(96, generator=gen))
    hf = hf.to(dtype)  # stored as the checkpoint is; HF adds the 1 in fp32 each call
    x = torch.randn(4, 96, generator=gen).to(dtype)
    folded = hf.weight.detach().float() + 1.0
    out, _ = torch_rms_norm(x, folded, EPS)
    assert torch.equal(out, hf(x))
