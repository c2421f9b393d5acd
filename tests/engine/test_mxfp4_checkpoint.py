"""MXFP4 checkpoints (gpt-oss's release): expert matrices dequantized at load."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers.integrations.mxfp4 import convert_moe_packed_tensors

from engine.config import ModelConfig
from engine.llm import LLM
from engine.mxfp4_checkpoint import dequantize
from kernels import mxfp4

from .quantized_variants import MXFP4, assert_same_outputs, write_mxfp4_variant


@pytest.mark.parametrize("chunk", [1 << 16, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dequantize_is_transformers_bit_for_bit(
    dtype: torch.dtype, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every code (both nibbles of every byte) and scales far from 1 both ways, in one
    chunk of rows and in chunks of 7 blocks that cut rows."""
    monkeypatch.setattr(mxfp4, "CHUNK_BYTES", chunk * 16)
    gen = torch.Generator().manual_seed(0)
    # 480 bytes: all 256 values once (every pair of codes), then random ones.
    blocks = (
        torch.cat((torch.arange(256), torch.randint(0, 256, (224,), generator=gen)))
        .to(torch.uint8)
        .view(3, 5, 2, 16)
    )
    scales = torch.randint(100, 150, (3, 5, 2), dtype=torch.uint8, generator=gen)
    got = dequantize(blocks, scales, dtype)
    assert got.shape == (3, 5, 64) and got.dtype == dtype
    assert torch.equal(
        got.transpose(-1, -2), convert_moe_packed_tensors(blocks, scales, dtype=dtype)
    )
    with pytest.raises(ValueError, match="do not match their scales"):
        dequantize(blocks, scales[..., :1], dtype)


def test_an_mxfp4_checkpoint_serves_the_weights_it_encodes(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """Token for token and logprob for logprob the model its dequantized experts make,
    which HF parity (tests/engine/test_parity.py) covers from there."""
    mxfp4, reference = tmp_path / "mxfp4", tmp_path / "reference"
    write_mxfp4_variant(make_random_model("gpt_oss"), mxfp4, reference)
    assert ModelConfig.from_folder(mxfp4).weight_quantization == "mxfp4"
    assert_same_outputs(mxfp4, reference)


def test_mxfp4_blocks_without_scales_and_mxfp4_on_other_models_are_errors(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    mxfp4, reference = tmp_path / "mxfp4", tmp_path / "reference"
    write_mxfp4_variant(make_random_model("gpt_oss"), mxfp4, reference)
    weights = load_file(mxfp4 / "model.safetensors")
    del weights["model.layers.1.mlp.experts.down_proj_scales"]
    save_file(weights, mxfp4 / "model.safetensors")
    with pytest.raises(ValueError, match=r"down_proj_blocks' has no"):
        LLM(str(mxfp4), kv_cache_memory=64 << 20)
    llama = json.loads((make_random_model("llama") / "config.json").read_text())
    with pytest.raises(ValueError, match="MXFP4 checkpoints are supported for gpt-oss only"):
        ModelConfig.from_dict({**llama, "quantization_config": MXFP4})
