"""--kv-cache-dtype's names, and the FP8 reference: saturated codes, read back in fp32."""

from __future__ import annotations

import pytest
import torch

from engine.config import EngineConfig
from kernels.kv_cache_dtype import (
    dequantize_kv,
    e4m3_to_float,
    quantize_kv,
    resolve_kv_cache_dtype,
)


@pytest.mark.parametrize(
    "name,expected",
    [
        (None, torch.bfloat16),
        ("auto", torch.bfloat16),
        ("fp8", torch.float8_e4m3fn),
        ("fp8_e4m3", torch.float8_e4m3fn),
        ("fp8_e5m2", torch.float8_e5m2),
    ],
)
def test_vllms_names(name: str | None, expected: torch.dtype) -> None:
    assert resolve_kv_cache_dtype(name, torch.bfloat16) == expected


def test_unknown_names_are_refused_before_any_loading() -> None:
    with pytest.raises(ValueError, match="unsupported 'int8'"):
        resolve_kv_cache_dtype("int8", torch.float32)
    with pytest.raises(ValueError, match="kv_cache_dtype must be one of"):
        EngineConfig(kv_cache_dtype="fp8_e4m3fn")


@pytest.mark.parametrize("fmt,limit", [(torch.float8_e4m3fn, 448.0), (torch.float8_e5m2, 57344.0)])
def test_values_past_the_format_saturate_and_scales_divide(fmt: torch.dtype, limit: float) -> None:
    values = torch.tensor([1.0, -3.0, 1e6, -1e6, float("inf")], dtype=torch.bfloat16)
    codes = quantize_kv(values, fmt, 0.5)
    assert codes.dtype == fmt
    back = dequantize_kv(codes, torch.bfloat16, 0.5)
    assert back.dtype == torch.bfloat16
    assert back.tolist() == [1.0, -3.0, limit * 0.5, -limit * 0.5, limit * 0.5]


def test_a_full_precision_cache_stores_values_as_they_are() -> None:
    values = torch.randn(4, 3)
    assert quantize_kv(values, torch.float32, 0.5) is values
    assert dequantize_kv(values, torch.bfloat16, 0.5) is values


def test_e4m3_decoding_on_cpu_is_torchs_for_every_code() -> None:
    """The fast CPU decoder: every code (NaN, signed zeros, subnormals) as `.float()`."""
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn)
    expected = codes.float()
    got = e4m3_to_float(codes)
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
    finite = ~expected.isnan()
    assert torch.equal(got[finite].signbit(), expected[finite].signbit())
    stored = (torch.randn(3, 5, 7) * 40).to(torch.float8_e4m3fn)  # no NaN: none to mark
    assert torch.equal(e4m3_to_float(stored), stored.float())
    assert e4m3_to_float(codes[:0]).shape == (0,)
