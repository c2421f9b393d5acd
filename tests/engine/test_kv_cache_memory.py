from __future__ import annotations

import os

import pytest
import torch

from engine.kv_cache_memory import zeroed_kv_tensor

CPU = torch.device("cpu")


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float8_e4m3fn])
def test_a_cpu_cache_is_zero_filled_writable_and_of_its_shape(dtype: torch.dtype) -> None:
    cache = zeroed_kv_tensor((5, 16, 2, 8), dtype, CPU)
    assert cache.shape == (5, 16, 2, 8) and cache.dtype == dtype and cache.is_contiguous()
    assert not cache.float().any()
    cache[3, 7] = 1.5
    assert cache.float().sum().item() == 1.5 * 2 * 8


def test_a_cpu_cache_takes_memory_only_where_it_is_written() -> None:
    size = 256 << 20
    before = _resident_bytes()
    cache = zeroed_kv_tensor((size // 4,), torch.float32, CPU)
    assert _resident_bytes() - before < size // 8  # allocated, not yet resident
    cache[: size // 8].fill_(1.0)  # a half written: its pages are now in memory
    assert _resident_bytes() - before >= size // 2 - (8 << 20)


def test_an_empty_cache_is_allowed() -> None:
    assert zeroed_kv_tensor((0, 16, 2, 8), torch.float32, CPU).numel() == 0
