"""The FP8 linear benchmark refuses on CPU instead of printing numbers, and reads shapes."""

from __future__ import annotations

import argparse

import pytest
import torch

from benchmarks.fp8_linear import _parse_args
from conveyor.cli import BENCHMARKS, _bench


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_refuses_without_a_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    # Reached as `conveyor bench fp8-linear`, like every benchmark.
    assert BENCHMARKS["fp8-linear"] == "benchmarks.fp8_linear"
    assert _bench(argparse.Namespace(target="fp8-linear", rest=["--rows", "1"])) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "needs a CUDA GPU" in captured.err


def test_shapes_are_out_by_in() -> None:
    args = _parse_args(["--shapes", "6144x4096,4096x14336", "--rows", "1,64"])
    assert args.shapes == [(6144, 4096), (4096, 14336)]
    assert args.rows == [1, 64]
    assert _parse_args([]).shapes[0] == (6144, 4096)
