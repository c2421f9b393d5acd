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


def test_mxfp4_and_int4_are_separate_runs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--mxfp4", "--int4"])
    assert "separate runs" in capsys.readouterr().err


def test_the_random_int4_stack_has_weights_of_ordinary_size() -> None:
    """Its codes are every 4-bit value, its groups runs of 128 (the GEMM's tile path),
    and its weights ~1 / sqrt(in), as a trained layer's."""
    from benchmarks.experts import _random_int4
    from kernels.packed_int import unpack_codes

    stack = _random_int4(3, 40, 300, torch.Generator().manual_seed(0))
    assert stack.shape == (3, 40, 300) and stack.group_size == 128
    assert set(unpack_codes(stack.codes[0], 4, 300).unique().tolist()) == set(range(16))
    weights = torch.stack([stack.expert(e, torch.float32) for e in range(3)])
    assert 0.3 < float(weights.std()) * 300**0.5 < 3
