"""How much KV cache the engine asks a GPU for (the arithmetic; allocating needs a GPU)."""

from __future__ import annotations

import logging

import pytest

from engine.llm_engine import cuda_kv_budget

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
