"""How much KV cache the engine asks a GPU for (the arithmetic; allocating needs a GPU)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.llm import LLM
from engine.llm_engine import cuda_kv_budget, fixed_cuda_kv_budget

GIB = 1 << 30


def test_cuda_kv_budget_on_a_card_of_its_own() -> None:
    # 80 GiB card, our 2 GiB of weights loaded, 1 GiB of headroom: the share decides.
    budget = cuda_kv_budget(80 * GIB, 77 * GIB, 2 * GIB, 0.9, 1 * GIB)
    assert budget == int(80 * GIB * 0.9) - 3 * GIB


def test_cuda_kv_budget_on_a_card_shared_with_another_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Someone else holds 40 GiB: what is free decides, and the log says why.
    with caplog.at_level(logging.WARNING, logger="engine.llm_engine"):
        budget = cuda_kv_budget(80 * GIB, 37 * GIB, 2 * GIB, 0.9, 1 * GIB)
    assert budget == 36 * GIB
    assert "only 37.0 GiB of 80.0 GiB GPU memory is free" in caplog.text


def test_kv_cache_memory_bytes_on_a_gpu_is_taken_exactly_when_it_fits() -> None:
    """vLLM's --kv-cache-memory-bytes: exactly the bytes asked for, whatever the share;
    more than is free beside the activations stops start-up saying so."""
    assert fixed_cuda_kv_budget(10 * GIB, 77 * GIB, 1 * GIB) == 10 * GIB
    with pytest.raises(ValueError, match=r"asks for 80\.00 GiB .* only 36\.00 GiB"):
        fixed_cuda_kv_budget(80 * GIB, 37 * GIB, 1 * GIB)


def test_kv_cache_memory_bytes_sizes_a_cpu_cache_too(
    make_random_model: Callable[[str], Path],
) -> None:
    folder = str(make_random_model("llama"))
    default = LLM(folder, max_model_len=128).engine
    per_block = (1 << 30) // default.num_kv_blocks  # --kv-cache-memory's 1 GiB
    sized = LLM(folder, max_model_len=128, kv_cache_memory_bytes=per_block * 100).engine
    assert sized.num_kv_blocks == 100
