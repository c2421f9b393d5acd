"""--quantization fp8: a full-precision checkpoint served as its per-row FP8 rounding."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from engine.config import EngineConfig
from engine.online_fp8 import wants_online_fp8
from kernels import fp8
from kernels.fp8 import Fp8Block, quantize_rows

from .quantized_variants import (
    assert_same_outputs,
    write_fp8_rounded_variant,
    write_fp8_variant,
    write_kv_cache_scales_variant,
)


@pytest.mark.parametrize(
    "requested,checkpoint,online",
    [
        (None, None, False),
        ("fp8", None, True),
        ("fp8", "fp8", True),  # the loader quantizes only if it holds no FP8 weights
        ("compressed-tensors", "fp8", False),
        ("mxfp4", "mxfp4", False),
        ("gptq_marlin", "gptq", False),
        ("awq", "awq", False),
        ("compressed-tensors", "int", False),
    ],
)
def test_which_requests_quantize(
    requested: str | None, checkpoint: str | None, online: bool
) -> None:
    assert wants_online_fp8(requested, checkpoint) is online


@pytest.mark.parametrize(
    "requested,checkpoint,refusal",
    [
        ("bitsandbytes", None, "unsupported 'bitsandbytes'"),
        ("awq", None, "names a checkpoint format"),
        ("awq_marlin", "gptq", "does not match the checkpoint's own gptq"),
        ("gptq", "int", "does not match"),
        ("mxfp4", None, "not quantized"),
        ("fp8", "mxfp4", "does not match the checkpoint's own mxfp4"),
        ("mxfp4", "fp8", "does not match"),
    ],
)
def test_requests_the_checkpoint_cannot_meet_are_refused(
    requested: str, checkpoint: str | None, refusal: str
) -> None:
    with pytest.raises(ValueError, match=refusal):
        wants_online_fp8(requested, checkpoint)
    if requested == "bitsandbytes":
        with pytest.raises(ValueError, match="quantization must be one of"):
            EngineConfig(quantization=requested)


def test_rows_keep_their_own_scale() -> None:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 40, generator=gen) * torch.tensor([1e-3, 1, 50, 0, 3, 7])[:, None]
    original = weight.clone()
    codes, scales = quantize_rows(weight)
    assert torch.equal(weight, original)  # the weight itself is left alone
    assert codes.dtype == torch.uint8 and scales.shape == (6, 1)
    back = fp8.dequantize(codes, scales, Fp8Block(1, 40), torch.float32)
    # Each row's largest value is exact (448 x its scale); the rest within e4m3's 2^-4.
    assert torch.equal(back.abs().amax(1), weight.abs().amax(1))
    torch.testing.assert_close(back, weight, rtol=2**-4, atol=0)
    assert not back[3].any()  # an all-zero row stays zero


def test_rows_quantize_alike_a_few_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    weight = torch.randn(37, 40, generator=torch.Generator().manual_seed(1))
    whole = quantize_rows(weight)
    monkeypatch.setattr(fp8, "QUANTIZE_CHUNK", 3 * 40)  # three rows a time, the last short
    chunked = quantize_rows(weight)
    assert all(torch.equal(a, b) for a, b in zip(whole, chunked, strict=True))


# Qwen2-MoE: its one-output shared-expert gate stays full precision, as in vLLM.
@pytest.mark.parametrize("family", ["llama", "qwen3_moe", "qwen2_moe"])
def test_the_torch_backend_serves_the_per_row_fp8_rounding(
    family: str, make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """Token for token and logprob for logprob, the quantized engine is a plain one on
    the rounded weights: projections and expert stacks, not the LM head."""
    source = make_random_model(family)
    rounded = tmp_path / "rounded"
    write_fp8_rounded_variant(source, rounded)
    assert_same_outputs(source, rounded, quantization="fp8")


def test_an_fp8_checkpoint_is_served_as_it_is_and_a_kv_cache_scheme_alone_is_quantized(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """`--quantization fp8` on a checkpoint already FP8 changes nothing; on one whose
    config names FP8 for its KV cache only (plain weights) it quantizes the weights."""
    source = make_random_model("llama")
    fp8_checkpoint, dequantized = tmp_path / "fp8", tmp_path / "dequantized"
    write_fp8_variant(source, fp8_checkpoint, dequantized, [16, 16])
    assert_same_outputs(fp8_checkpoint, fp8_checkpoint, quantization="fp8")
    kv_only, rounded = tmp_path / "kv-only", tmp_path / "rounded"
    write_kv_cache_scales_variant(source, kv_only, {0: (1.0, 1.0)})
    write_fp8_rounded_variant(source, rounded)
    assert_same_outputs(kv_only, rounded, quantization="fp8")
