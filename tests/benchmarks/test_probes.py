"""The machine probes stay within their time budget on any CPU."""

from __future__ import annotations

import torch

from benchmarks.probes import _square_size_within, gemm_gflops


def test_square_gemm_shrinks_to_fit_a_zero_budget_and_keeps_its_size_with_room() -> None:
    cpu = torch.device("cpu")
    # No budget: the smallest square (a warm-up and three reps of it, milliseconds).
    assert _square_size_within(0.0, 2048, cpu, torch.float32) == 256
    # An hour is room enough for the largest at any speed this machine has.
    assert _square_size_within(3600.0, 1024, cpu, torch.float32) == 1024


def test_square_probe_measures_at_the_size_it_can_afford() -> None:
    assert gemm_gflops("square", budget_s=0.0, dtype=torch.bfloat16) > 0
