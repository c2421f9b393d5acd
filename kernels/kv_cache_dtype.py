"""The KV cache's element type: the model's dtype, or FP8 (vLLM's --kv-cache-dtype).

An FP8 cache holds each key and value as one byte, the e4m3 (three mantissa
bits, to +-448: vLLM's `fp8`) or e5m2 (two, to +-57344) code of value / scale,
saturated and rounded to nearest even. That is half a bf16 cache (a quarter of
fp32), so twice the tokens fit in the same memory. Attention reads every key
and value back as code * scale in the model's dtype, the step's own new tokens
too, so what attention sees does not depend on how a prompt was chunked or
which prefix came from the cache: batching, chunked prefill and prefix caching
still leave greedy output unchanged, although it is no longer HF's. The scales
are one per layer for keys and one for values: a checkpoint's calibrated
`k_scale`/`v_scale` where it has them (llm-compressor's kv_cache_scheme), else
1.0, as vLLM. `quantize_kv`/`dequantize_kv` are the reference the Triton
kernels (kernels/triton_fp8.py) match bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.fp8 import E4M3_MAX

# vLLM's --kv-cache-dtype values; None: the model's dtype.
KV_CACHE_DTYPES: dict[str, torch.dtype | None] = {
    "auto": None,
    "fp8": torch.float8_e4m3fn,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
# The largest finite magnitude of each format: values past it saturate to it.
FP8_MAX = {torch.float8_e4m3fn: E4M3_MAX, torch.float8_e5m2: 57344.0}
# How Triton kernels name the formats (a constexpr): 0 is no FP8 at all.
FP8_FORMAT_CODES = {torch.float8_e4m3fn: 1, torch.float8_e5m2: 2}


@dataclass(frozen=True)
class KvScales:
    """One layer's FP8 scales: a key is stored as code(key / k), read as code * k."""

    k: float = 1.0
    v: float = 1.0

    def __post_init__(self) -> None:
        if not (self.k > 0 and self.v > 0) or float("inf") in (self.k, self.v):
            raise ValueError(f"KV cache scales must be finite and positive, got {self}")


UNIT_SCALES = KvScales()


def resolve_kv_cache_dtype(name: str | None, model_dtype: torch.dtype) -> torch.dtype:
    """The cache's dtype for --kv-cache-dtype `name` (None or "auto": the model's)."""
    try:
        dtype = KV_CACHE_DTYPES[name or "auto"]
    except KeyError:
        raise ValueError(
            f"kv_cache_dtype: unsupported {name!r}; use one of {list(KV_CACHE_DTYPES)}"
        ) from None
    return model_dtype if dtype is None else dtype


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in FP8_MAX


def fp8_format_code(dtype: torch.dtype) -> int:
    """The Triton kernels' constexpr for a cache of `dtype` (0: not FP8)."""
    return FP8_FORMAT_CODES.get(dtype, 0)


def quantize_kv(values: torch.Tensor, cache_dtype: torch.dtype, scale: float) -> torch.Tensor:
    """`values` as stored in a cache of `cache_dtype`: code(values / scale) for FP8,
    saturated, else the values themselves. The division is a product with 1 / scale
    rounded to fp32, as the kernels compute it: one correctly rounded fp32 multiply on
    every device (a GPU's fp32 division is not correctly rounded)."""
    if not is_fp8(cache_dtype):
        return values
    limit = FP8_MAX[cache_dtype]
    return (values.float() * (1.0 / scale)).clamp_(-limit, limit).to(cache_dtype)


def dequantize_kv(stored: torch.Tensor, dtype: torch.dtype, scale: float) -> torch.Tensor:
    """Cache contents back in the model's `dtype`: code * scale, rounded once from fp32."""
    if not is_fp8(stored.dtype):
        return stored
    values = e4m3_to_float(stored) if stored.dtype == torch.float8_e4m3fn else stored.float()
    if scale != 1.0:
        values.mul_(scale)
    return values.to(dtype)


def e4m3_to_float(stored: torch.Tensor) -> torch.Tensor:
    """float8_e4m3fn values as fp32, exactly `.float()`'s (NaN included), ~2x faster on a
    CPU, where torch converts e4m3 one value at a time: sign-extended to int16, a code's
    low seven bits moved into a half's exponent and mantissa fields are the value / 256
    (subnormals included); only NaN codes come out as 480, past e4m3's largest 448."""
    bits = stored.view(torch.int8).to(torch.int16)
    half = ((bits << 7) & 0x3F80) | (bits & -32768)
    values = half.view(torch.float16).float().mul_(256.0)
    if values.numel() and float(values.abs().max()) > FP8_MAX[torch.float8_e4m3fn]:
        values.masked_fill_(values.abs() == 480.0, float("nan"))
    return values
