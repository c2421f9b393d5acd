"""MXFP4 in Triton: the in-kernel decoding, the experts' GEMMs on MXFP4 weights, and a
gpt-oss MXFP4 checkpoint served with its experts kept MXFP4, each against the torch
reference (kernels/mxfp4.py's `dequantize`, kernels/experts.py)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import torch
import triton
import triton.language as tl

from engine.llm import LLM
from kernels.clamped_swiglu_and_mul import clamped_swiglu_and_mul as torch_clamped_swiglu
from kernels.experts import experts as torch_experts
from kernels.mxfp4 import Mxfp4Weight, dequantize
from kernels.triton_clamped_swiglu_and_mul import clamped_swiglu_and_mul
from kernels.triton_experts import fused_experts
from kernels.triton_mxfp4 import mxfp4_pair

from ..engine.quantized_variants import assert_backends_agree, write_mxfp4_variant
from .tolerances import DTYPES, assert_close


@triton.jit
def _decode_kernel(packed_ptr, scale_ptr, out_ptr, BLOCK: tl.constexpr):
    """Row r's BLOCK bytes (each beside its scale) -> its 2 * BLOCK values, interleaved."""
    row = tl.program_id(0)
    j = tl.arange(0, BLOCK)
    packed = tl.load(packed_ptr + row * BLOCK + j)
    scale = tl.load(scale_ptr + row * BLOCK + j)
    even, odd = mxfp4_pair(packed, scale)
    tl.store(out_ptr + row * 2 * BLOCK + 2 * j, even)
    tl.store(out_ptr + row * 2 * BLOCK + 2 * j + 1, odd)


# The largest scales overflow to inf on purpose (numpy, under the interpreter, says so).
@pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")
def test_decoding_is_the_reference_for_every_byte_and_scale(device: torch.device) -> None:
    """All 256 bytes (every pair of codes) under every scale whose products are normal
    fp32 numbers or overflow (2^-125 ... 2^127; e8m0's 255 is NaN, and the subnormal
    end is not something a GPU's flush-to-zero need keep)."""
    scales = torch.arange(2, 255, dtype=torch.uint8)
    blocks = torch.arange(256, dtype=torch.uint8).repeat(scales.shape[0], 1)
    block_scales = scales[:, None].expand(-1, 256 // 16).contiguous()
    expected = dequantize(blocks, block_scales, torch.float32)
    byte_scales = scales[:, None].expand(-1, 256).contiguous()
    got = torch.empty(scales.shape[0], 512, device=device)
    _decode_kernel[(scales.shape[0],)](blocks.to(device), byte_scales.to(device), got, BLOCK=256)
    assert torch.equal(got.cpu(), expected)
    # Signs too: e2m1's negative zero stays negative.
    assert torch.equal(torch.signbit(got.cpu()), torch.signbit(expected))


HIDDEN, INTER = 160, 96  # multiples of a scale's 32 values; 160 not of a 64-wide tile


def _random_stack(experts: int, rows: int, cols: int, gen: torch.Generator) -> Mxfp4Weight:
    """Scales 2^-7 ... 2^-5: e2m1 codes drawn evenly have a spread of ~2.9, so the
    weights' is ~1 / sqrt(cols), as the other experts tests' (outputs of order 1)."""
    blocks = torch.randint(0, 256, (experts, rows, cols // 2), dtype=torch.uint8, generator=gen)
    scales = torch.randint(120, 123, (experts, rows, cols // 32), dtype=torch.uint8, generator=gen)
    return Mxfp4Weight(blocks, scales)


def _on(stack: Mxfp4Weight, device: torch.device) -> Mxfp4Weight:
    return Mxfp4Weight(stack.blocks.to(device), stack.scales.to(device))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,num_experts,top_k", [(1, 8, 2), (6, 16, 4), (70, 4, 2)])
def test_fused_experts_on_mxfp4_weights_match_torch(
    device: torch.device, dtype: torch.dtype, tokens: int, num_experts: int, top_k: int
) -> None:
    """gpt-oss's experts (biases, the clamped SwiGLU) on MXFP4 stacks: the Triton GEMMs,
    which decode tiles as they read them, against the torch loop on the dequantized
    stacks; the torch loop on the MXFP4 stacks is that loop exactly."""
    gen = torch.Generator().manual_seed(tokens + num_experts)
    gate_up = _random_stack(num_experts, 2 * INTER, HIDDEN, gen)
    down = _random_stack(num_experts, HIDDEN, INTER, gen)
    biases = [
        (0.3 * torch.randn(num_experts, 2 * INTER, generator=gen)).to(device, dtype),
        (0.3 * torch.randn(num_experts, HIDDEN, generator=gen)).to(device, dtype),
    ]
    x = torch.randn(tokens, HIDDEN, generator=gen).to(device, dtype)
    logits = torch.randn(tokens, num_experts, generator=gen)
    top, chosen = torch.topk(logits, top_k, dim=-1)
    weights, chosen = top.softmax(-1).to(device, dtype), chosen.to(device)
    gate_up, down = _on(gate_up, device), _on(down, device)
    plain = [dequantize(s.blocks, s.scales, dtype) for s in (gate_up, down)]
    torch_act = partial(torch_clamped_swiglu, alpha=1.702, limit=7.0)
    expected = torch_experts(x, *plain, weights, chosen, torch_act, *biases)
    on_mxfp4 = torch_experts(x, gate_up, down, weights, chosen, torch_act, *biases)
    assert torch.equal(on_mxfp4, expected)
    triton_act = partial(clamped_swiglu_and_mul, alpha=1.702, limit=7.0)
    got = fused_experts(x, gate_up, down, weights, chosen, triton_act, *biases)
    assert got.dtype == dtype
    assert_close(got, expected)


def test_mismatched_blocks_and_scales_are_refused() -> None:
    blocks = torch.zeros(2, 4, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match="do not match their scales"):
        Mxfp4Weight(blocks, torch.zeros(2, 4, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="do not match their scales"):
        Mxfp4Weight(blocks.float(), torch.zeros(2, 4, 1, dtype=torch.uint8))
    assert Mxfp4Weight(blocks, torch.zeros(2, 4, 1, dtype=torch.uint8)).shape == (2, 4, 32)


@pytest.mark.slow  # ~10 s in Triton's interpreter
def test_an_mxfp4_checkpoint_keeps_its_experts_mxfp4_on_triton(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """A gpt-oss MXFP4 checkpoint on the Triton backend keeps its experts as bytes and
    scales (a quarter of bf16's memory) and gives the greedy tokens the torch backend
    gives on its dequantized experts, and their logprobs and the prompts' to fp32's
    rounding (both paths multiply exact fp32 weights; only the order of sums differs)."""
    mxfp4, reference = tmp_path / "mxfp4", tmp_path / "reference"
    write_mxfp4_variant(make_random_model("gpt_oss"), mxfp4, reference)

    def check(backend: str, llm: LLM) -> None:
        moe = llm.engine.runner.model.layers[0].mlp
        assert moe.mxfp4 == (backend == "triton")
        if backend == "triton":
            assert moe.gate_up_blocks.dtype == torch.uint8 and not hasattr(moe, "gate_up")

    assert_backends_agree(mxfp4, check)
