"""The packed-integer linear benchmark refuses on CPU instead of printing numbers, and
builds the matrices it times."""

from __future__ import annotations

import argparse

import pytest
import torch

from benchmarks.int_linear import _parse_args, random_packed
from conveyor.cli import BENCHMARKS, _bench
from kernels.packed_int import dequantize


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_refuses_without_a_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    assert BENCHMARKS["int-linear"] == "benchmarks.int_linear"
    assert _bench(argparse.Namespace(target="int-linear", rest=["--rows", "1"])) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "needs a CUDA GPU" in captured.err


def test_arguments_and_the_random_matrix() -> None:
    args = _parse_args(["--shapes", "256x384", "--bits", "8", "--act-order"])
    assert (args.shapes, args.bits, args.act_order) == ([(256, 384)], 8, True)
    weight = random_packed((256, 384), 4, True, torch.device("cpu"), 0)
    assert weight.codes.shape == (256, 48) and weight.scales.shape == (256, 3)
    assert sorted(weight.groups.bincount().tolist()) == [128, 128, 128]
    # Weights of ~1 / sqrt(in): the scale that keeps a projection's outputs ~unit.
    std = float(dequantize(weight, torch.float32).std())
    assert 0.2 / 384**0.5 < std < 2 / 384**0.5
