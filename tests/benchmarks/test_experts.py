"""The experts benchmark refuses on CPU instead of printing numbers, and checks its shape."""

from __future__ import annotations

import argparse

import pytest
import torch

from benchmarks.experts import main
from conveyor.cli import BENCHMARKS, _bench


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_refuses_without_a_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    # Reached as `conveyor bench experts`, like every benchmark.
    assert BENCHMARKS["experts"] == "benchmarks.experts"
    assert _bench(argparse.Namespace(target="experts", rest=["--tokens", "1"])) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "needs a CUDA GPU" in captured.err


def test_top_k_must_fit_the_experts() -> None:
    with pytest.raises(SystemExit):
        main(["--experts", "4", "--top-k", "8"])


def test_mxfp4_needs_whole_scale_blocks(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--hidden", "2880", "--inter", "100", "--mxfp4"])
    assert "multiples of 32" in capsys.readouterr().err
