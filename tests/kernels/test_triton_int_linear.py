"""The Triton linear layer on packed integer weights against kernels/packed_int.py's
`dequantize` and `F.linear`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchmarks.int_linear import random_packed
from engine.llm import LLM
from engine.models.linear import scratch_bytes
from kernels import packed_int
from kernels.packed_int import dequantize, pack_codes, run_length, unpack_codes
from kernels.triton_int_linear import dequantize_int, int_linear

from ..engine.int_quantized_variants import (
    write_awq_variant,
    write_compressed_tensors_int_variant,
    write_gptq_variant,
)
from ..engine.quantized_variants import assert_backends_agree
from .tolerances import DTYPES, assert_close


def test_codes_pack_and_unpack_in_every_width() -> None:
    gen = torch.Generator().manual_seed(0)
    for bits in (2, 4, 8):
        codes = torch.randint(0, 1 << bits, (3, 37), generator=gen)  # a last word cut short
        packed = pack_codes(codes, bits)
        assert packed.shape == (3, -(-37 // (32 // bits))) and packed.dtype == torch.int32
        assert torch.equal(unpack_codes(packed, bits, 37), codes.to(torch.int32))
    # The lowest bits hold the first column: 0x76543210 is columns 0..7 of a 4-bit row.
    assert pack_codes(torch.arange(8).view(1, 8), 4).item() == 0x76543210


def test_plain_runs_of_groups_are_told_from_act_orders() -> None:
    assert run_length(torch.arange(100) // 32) == 32  # the last run cut short
    assert run_length(torch.zeros(64, dtype=torch.int32)) == 64  # one group a row
    shuffled = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    assert run_length(shuffled // 32) == 0
    assert run_length(torch.tensor([0, 0, 1, 1, 1, 2])) == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "rows,out_features,in_features,bits,group_size,act_order",
    # One decode row in 4 bits; a few rows over a last word and group cut short; 8-bit
    # codes through the widest row blocks; act-order's shuffled groups; 2-bit codes.
    [
        (1, 96, 128, 4, 32, False),
        (5, 70, 100, 4, 48, False),
        (40, 64, 96, 8, 32, False),
        (3, 48, 128, 4, 32, True),
        (2, 32, 64, 2, 64, False),
        # Runs of 128: every dtype's tiles lie within one (their scales read once a tile).
        (7, 40, 320, 4, 128, False),
    ],
)
def test_int_linear_matches_the_dequantized_matrix(
    device: torch.device,
    dtype: torch.dtype,
    rows: int,
    out_features: int,
    in_features: int,
    bits: int,
    group_size: int,
    act_order: bool,
) -> None:
    gen = torch.Generator().manual_seed(rows + out_features)
    shape = (out_features, in_features)
    weight = random_packed(shape, bits, act_order, device, rows + out_features, group_size)
    x = torch.randn(rows, in_features, generator=gen).to(device, dtype)
    bias = torch.randn(out_features, generator=gen).to(device, dtype)
    plain = dequantize(weight, dtype)
    copy = dequantize_int(weight, dtype)
    if dtype == torch.bfloat16 and device.type == "cpu":
        assert_close(copy, plain)  # the interpreter truncates fp32 -> bf16; a GPU rounds
    else:
        assert torch.equal(copy, plain)
    for with_bias in (None, bias):
        got = int_linear(x, weight, with_bias)
        assert got.dtype == dtype and got.shape == (rows, out_features)
        assert_close(got, F.linear(x, plain, with_bias))


def test_long_inputs_take_the_dequantized_copy(
    device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past INT_GEMM_MAX_ROWS the matrix is dequantized once and multiplied by torch; the
    batch's leading dimensions are kept either way."""
    monkeypatch.setattr(packed_int, "INT_GEMM_MAX_ROWS", 4)
    gen = torch.Generator().manual_seed(1)
    weight = random_packed((48, 64), 4, False, device, 1, 32)
    plain = dequantize(weight, torch.float32)
    for shape in ((2, 3, 64), (1, 2, 64)):  # 6 rows: the copy; 2: the GEMM
        x = torch.randn(*shape, generator=gen).to(device)
        got = int_linear(x, weight)
        assert got.shape == (*shape[:-1], 48)
        assert_close(got, F.linear(x, plain))
    assert int_linear(x[:0], weight).shape == (0, 2, 48)


@pytest.mark.slow  # ~10 s each in Triton's interpreter
@pytest.mark.parametrize(
    "scheme", ["gptq", "gptq act-order", "awq", "w4a16 asymmetric", "gptq glm4"]
)
def test_a_packed_checkpoint_keeps_its_projections_packed_on_triton(
    scheme: str,
    make_random_model: Callable[[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On the Triton backend a GPTQ, AWQ or W4A16 checkpoint's projections stay packed
    (int32 words, scales and zeros per group) and give the torch backend's greedy
    tokens on the dequantized weights, and their logprobs and the prompts' to fp32's
    rounding. Under act-order each of q, k and v (and gate and up) has its own
    shuffled groups, so the fused projections are dequantized as they load and only o
    and down stay packed. GLM-4's query/key rows, reordered for the half-split rotation
    as they load, take their scales' and zeros' rows along. GPTQ's prompt chunks past
    4 rows take the dequantized copy, as long ones do past 256."""
    folder, reference = tmp_path / "packed", tmp_path / "reference"
    source = make_random_model("glm4" if scheme.endswith("glm4") else "llama")
    if scheme.startswith("gptq"):
        monkeypatch.setattr(packed_int, "INT_GEMM_MAX_ROWS", 4)
        write_gptq_variant(source, folder, reference, 4, act_order=scheme == "gptq act-order")
    elif scheme == "awq":
        write_awq_variant(source, folder, reference)
    else:  # written by the compressed-tensors library, which a GPU machine may not have
        pytest.importorskip("compressed_tensors")
        write_compressed_tensors_int_variant(source, folder, reference, 4, "group", False)

    def check(backend: str, llm: LLM) -> None:
        model = llm.engine.runner.model
        layer = model.layers[0]
        kept = {
            name
            for name, linear in (
                ("qkv", layer.self_attn.qkv_proj),
                ("o", layer.self_attn.o_proj),
                ("gate_up", layer.mlp.gate_up_proj),
                ("down", layer.mlp.down_proj),
            )
            if linear.weight.dtype == torch.int32
        }
        if backend == "torch":
            assert not kept
        else:
            everything = {"qkv", "o", "gate_up", "down"}
            assert kept == ({"o", "down"} if scheme == "gptq act-order" else everything)
            assert layer.mlp.down_proj.weight.shape == (64, 128 // 8)  # eight codes a word
        # The largest dequantized copy, kept out of the KV cache: gate/up's [256, 64]
        # or, where only o and down stay packed, down's [64, 128].
        largest = 64 * 128 * 4 if scheme == "gptq act-order" else 256 * 64 * 4
        assert scratch_bytes(model, torch.float32, 2048) == (backend == "triton") * largest
        assert scratch_bytes(model, torch.float32, packed_int.INT_GEMM_MAX_ROWS) == 0

    assert_backends_agree(folder, check)


def test_a_packed_encoder_loads_on_triton(tmp_path: Path) -> None:
    """A GPTQ BERT (an encoder: no decoder layers, no experts, nothing kept packed) on
    the Triton backend embeds as the torch backend does."""
    from tests.encoder_models import make_encoder

    source, folder, reference = tmp_path / "bert", tmp_path / "packed", tmp_path / "reference"
    make_encoder(source, "BertModel", pooling="mean")

    def feed_forward(name: str) -> bool:
        return name.endswith(("intermediate.dense.weight", "output.dense.weight"))

    write_gptq_variant(
        source, folder, reference, 4, quantized=lambda n: feed_forward(n) and "attention" not in n
    )
    embeddings = {}
    for backend in ("torch", "triton"):
        llm = LLM(str(folder), attention_backend=backend, dtype="float32", num_kv_blocks=32)
        embeddings[backend] = torch.tensor(llm.embed([[5, 6, 7, 8]])[0].embedding)
    assert_close(embeddings["triton"], embeddings["torch"])
