"""The kernel benchmark refuses on CPU instead of printing numbers, and knows common GPUs' peaks."""

from __future__ import annotations

import pytest
import torch

from benchmarks.kernels import known_peak_gbs, main


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_refuses_without_a_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "needs a CUDA GPU" in captured.err


@pytest.mark.parametrize(
    "name,peak",
    [
        ("NVIDIA H200", 4800.0),
        ("NVIDIA H100 80GB HBM3", 3350.0),
        ("NVIDIA H100 PCIe", 2000.0),
        ("NVIDIA A100-SXM4-80GB", 2039.0),
        ("NVIDIA L4", 300.0),
        ("NVIDIA L40S", 864.0),
        ("Some Future GPU", None),
    ],
)
def test_known_peaks(name: str, peak: float | None) -> None:
    assert known_peak_gbs(name) == peak
