"""FP8 codes in Triton kernels against torch's float8 dtypes: every code decoded, and
encoding (rounding, saturation, subnormals, signed zeros) bit for bit on every bf16
value, random fp32 and the exact midpoints between codes."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from kernels.kv_cache_dtype import FP8_MAX, fp8_format_code, quantize_kv
from kernels.triton_fp8 import e4m3_to_float, float_to_fp8, fp8_to_float

FORMATS = [torch.float8_e4m3fn, torch.float8_e5m2]
BLOCK = 4096


@triton.jit
def _decode_kernel(
    code_ptr, out_ptr, FORMAT: tl.constexpr, E4M3_HELPER: tl.constexpr, SPECIALS: tl.constexpr
):
    j = tl.arange(0, 256)
    code = tl.load(code_ptr + j).to(tl.int32)
    if E4M3_HELPER:
        tl.store(out_ptr + j, e4m3_to_float(code))
    else:
        tl.store(out_ptr + j, fp8_to_float(code, FORMAT, SPECIALS))


@triton.jit
def _encode_kernel(x_ptr, out_ptr, n, FORMAT: tl.constexpr, BLOCK: tl.constexpr):
    j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = j < n
    x = tl.load(x_ptr + j, mask=mask, other=0.0)
    tl.store(out_ptr + j, float_to_fp8(x, FORMAT).to(tl.uint8), mask=mask)


# e4m3_to_float: the FP8 weights' spelling of the e4m3 decoder.
@pytest.mark.parametrize(
    "fmt,e4m3_helper",
    [(torch.float8_e4m3fn, False), (torch.float8_e5m2, False), (torch.float8_e4m3fn, True)],
)
def test_decoding_is_torchs_for_every_finite_code(
    fmt: torch.dtype, e4m3_helper: bool, device: torch.device
) -> None:
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    got = torch.empty(256, device=device)
    _decode_kernel[(1,)](
        codes.to(device), got, FORMAT=fp8_format_code(fmt), E4M3_HELPER=e4m3_helper, SPECIALS=False
    )
    expected = codes.view(fmt).float()
    finite = expected.isfinite()
    # e4m3fn: two NaNs; e5m2: two infinities and six NaNs.
    assert int(finite.sum()) == (254 if fmt == torch.float8_e4m3fn else 248)
    assert torch.equal(got.cpu()[finite], expected[finite])
    assert torch.equal(got.cpu()[finite].signbit(), expected[finite].signbit())


def _encoding_cases(fmt: torch.dtype) -> torch.Tensor:
    every_bf16 = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    every_bf16 = every_bf16.float()[every_bf16.isfinite()]
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(fmt).float()
    codes = codes[codes.isfinite()].unique()  # sorted; one zero
    midpoints = (codes[1:] + codes[:-1]) / 2  # ties: rounded to the even code
    gen = torch.Generator().manual_seed(0)
    limit = FP8_MAX[fmt]
    return torch.cat(
        (
            every_bf16,
            midpoints,
            torch.randn(50_000, generator=gen) * limit / 4,
            torch.randn(50_000, generator=gen) * float(codes[codes > 0].min()) * 8,  # subnormals
            torch.tensor([0.0, -0.0, limit, -limit, limit * 1.06, -1e30, 1e30]),
        )
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_encoding_is_torchs_on_saturated_values(fmt: torch.dtype, device: torch.device) -> None:
    x = _encoding_cases(fmt)
    got = torch.empty(x.shape, dtype=torch.uint8, device=device)
    grid = (triton.cdiv(x.numel(), BLOCK),)
    _encode_kernel[grid](x.to(device), got, x.numel(), FORMAT=fp8_format_code(fmt), BLOCK=BLOCK)
    expected = quantize_kv(x, fmt, 1.0).view(torch.uint8)
    wrong = (got.cpu() != expected).nonzero().flatten()
    assert wrong.numel() == 0, f"{wrong.numel()} differ, e.g. {x[wrong[:4]].tolist()}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_kv_caches_decoding_gives_nan_and_inf_codes_as_torch(
    fmt: torch.dtype, device: torch.device
) -> None:
    """A NaN key stays NaN through an FP8 cache, as in the torch reference."""
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    got = torch.empty(256, device=device)
    _decode_kernel[(1,)](
        codes.to(device), got, FORMAT=fp8_format_code(fmt), E4M3_HELPER=False, SPECIALS=True
    )
    expected = codes.view(fmt).float()
    torch.testing.assert_close(got.cpu(), expected, rtol=0, atol=0, equal_nan=True)
    x = torch.tensor([float("nan"), -float("nan"), float("inf"), -float("inf")])
    encoded = torch.empty(4, dtype=torch.uint8, device=device)
    _encode_kernel[(1,)](x.to(device), encoded, 4, FORMAT=fp8_format_code(fmt), BLOCK=16)
    assert encoded.cpu().tolist() == quantize_kv(x, fmt, 1.0).view(torch.uint8).tolist()
