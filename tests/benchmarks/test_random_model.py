"""Random-weight model folders load in both HF and our engine, with the shape asked for."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.random_model import SHAPES, ModelShape, build_random_model, main
from engine.config import ModelConfig


def test_shapes_use_the_bundled_vocabulary(bundled_model_dir: Path) -> None:
    bundled = ModelConfig.from_folder(bundled_model_dir)
    assert {shape.vocab_size for shape in SHAPES.values()} == {bundled.vocab_size}
    small = SHAPES["smollm2-135m"]
    assert (small.hidden_size, small.num_hidden_layers) == (
        bundled.hidden_size,
        bundled.num_layers,
    )
    assert (small.num_attention_heads, small.num_key_value_heads) == (
        bundled.num_heads,
        bundled.num_kv_heads,
    )


def test_folder_loads_with_the_shape_and_tokenizer(tmp_path: Path, bundled_model_dir: Path) -> None:
    shape = ModelShape(64, 96, 3, 8, 2, tie_word_embeddings=False)
    folder = build_random_model(tmp_path / "m", shape, bundled_model_dir, dtype=torch.float16)
    config = ModelConfig.from_folder(folder)
    assert (config.hidden_size, config.intermediate_size, config.num_layers) == (64, 96, 3)
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (8, 2, 8)
    assert (folder / "tokenizer.json").is_file()
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "pt") as weights:
        embed = weights.get_tensor("model.embed_tokens.weight")
    assert embed.dtype == torch.float16 and embed.shape == (49152, 64)
    # The wide init that keeps greedy comparisons decisive.
    assert 0.25 < embed.float().std().item() < 0.35


def test_cli_refuses_a_folder_without_a_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        main([str(tmp_path / "m"), "--shape", "smollm2-135m", "--tokenizer", str(tmp_path)])
