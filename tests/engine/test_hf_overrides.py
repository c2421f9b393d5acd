"""vLLM's --hf-overrides: JSON laid over config.json, sub-configs key by key, and the
rotation's overrides reaching it whichever form the file keeps it in."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import ModelConfig
from engine.hf_overrides import apply_hf_overrides, parse_hf_overrides

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}


def test_values_replace_the_files_and_sub_configs_merge() -> None:
    hf = {
        "max_position_embeddings": 4096,
        "rope_scaling": {"rope_type": "linear", "factor": 2.0},
        "text_config": {"hidden_size": 64, "num_hidden_layers": 2},
        "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]},
    }
    overrides = {
        "max_position_embeddings": 8192,
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0},
        "text_config": {"num_hidden_layers": 1},
        "quantization_config": {"quant_method": "fp8"},
    }
    merged = apply_hf_overrides(hf, overrides)
    assert merged == {
        "max_position_embeddings": 8192,
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0},  # whole, as in vLLM
        "text_config": {"hidden_size": 64, "num_hidden_layers": 1},
        "quantization_config": {"quant_method": "fp8"},
    }
    assert hf["text_config"] == {"hidden_size": 64, "num_hidden_layers": 2}  # untouched


def test_rope_overrides_reach_a_transformers_5_config() -> None:
    """Qwen's instructions give `rope_scaling`; a config saved by transformers 5 keeps the
    rotation in `rope_parameters`, which the engine reads first."""
    hf = {"rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}}
    scaled = apply_hf_overrides(hf, {"rope_scaling": YARN})
    assert scaled["rope_parameters"] == {**YARN, "rope_theta": 1000000.0}
    legacy_key = apply_hf_overrides(hf, {"rope_scaling": {"type": "linear", "factor": 2.0}})
    assert legacy_key["rope_parameters"] == {
        "rope_type": "linear",
        "factor": 2.0,
        "rope_theta": 1000000.0,
    }
    theta = apply_hf_overrides(hf, {"rope_theta": 5000.0})
    assert theta["rope_parameters"] == {"rope_type": "default", "rope_theta": 5000.0}
    unscaled = apply_hf_overrides(
        {"rope_parameters": {**YARN, "rope_theta": 1.0}}, {"rope_scaling": None}
    )
    assert unscaled["rope_parameters"] == {"rope_type": "default", "rope_theta": 1.0}
    # Gemma 3's per-layer-kind parameters are not guessed at.
    gemma = {"rope_parameters": {"full_attention": {"rope_theta": 1.0}}}
    assert (
        apply_hf_overrides(gemma, {"rope_theta": 2.0})["rope_parameters"]
        == gemma["rope_parameters"]
    )


def test_the_model_config_is_read_with_them(bundled_model_dir: Path) -> None:
    plain = ModelConfig.from_folder(bundled_model_dir)
    stretched = ModelConfig.from_folder(
        bundled_model_dir, {"rope_scaling": {**YARN, "original_max_position_embeddings": 8192}}
    )
    assert plain.rope.rope_type == "default"
    assert (stretched.rope.rope_type, stretched.rope.factor) == ("yarn", 4.0)
    assert stretched.rope.context_length(stretched.max_position_embeddings) == 4 * 8192
    assert stretched.rope.theta == plain.rope.theta


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("{broken", "not JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"rope_scaling": 4}', "rope_scaling must be an object or null"),
    ],
)
def test_what_is_not_an_object_of_overrides_is_refused(value: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_hf_overrides(value)
    assert parse_hf_overrides(None) == parse_hf_overrides("") == {}
    assert parse_hf_overrides('{"rope_theta": 5}') == {"rope_theta": 5}
