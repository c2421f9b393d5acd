"""Reading PEFT adapter folders: what is served, and what is refused with its reason."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from benchmarks.random_lora import build_random_lora
from engine.config import ModelConfig
from engine.lora_adapter import LoRAAdapterError, load_lora_adapter


@pytest.fixture(scope="module")
def base_dir(make_random_model: Callable[[str], Path]) -> Path:
    return make_random_model("llama")


@pytest.fixture(scope="module")
def config(base_dir: Path) -> ModelConfig:
    return ModelConfig.from_folder(base_dir)


def edit_config(folder: Path, **changes: object) -> None:
    path = folder / "adapter_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def test_scaling_is_folded_into_b(base_dir: Path, config: ModelConfig, tmp_path: Path) -> None:
    folder = build_random_lora(
        tmp_path / "a", base_dir, rank=4, alpha=12, targets=("q_proj", "down_proj")
    )
    raw = load_file(str(folder / "adapter_model.safetensors"))
    adapter = load_lora_adapter("a", folder, config, max_rank=16)
    assert sorted(adapter.weights) == [
        (layer, p) for layer in range(config.num_layers) for p in ("down_proj", "q_proj")
    ]
    b = raw["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"]
    torch.testing.assert_close(adapter.weights[(1, "down_proj")].b, b * 3.0)  # 12 / 4
    edit_config(folder, use_rslora=True, alpha_pattern={"q_proj": 6})
    adapter = load_lora_adapter("a", folder, config, max_rank=16)
    b = raw["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    torch.testing.assert_close(adapter.weights[(0, "q_proj")].b, b * (6 / math.sqrt(4)))
    assert adapter.rank == 4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"use_dora": True}, "DoRA is not supported"),
        ({"bias": "lora_only"}, "trained biases"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"peft_type": "IA3"}, "only LORA adapters"),
        ({"lora_alpha": "big"}, "lora_alpha must be a number"),
        ({"alora_invocation_tokens": [5, 6]}, "alora_invocation_tokens.*does not implement"),
        ({"layer_replication": [[0, 2], [1, 2]]}, "layer_replication"),
        ({"init_lora_weights": "pissa_niter_4"}, "also changes the base weights"),
        ({"some_future_variant": {"on": True}}, "some_future_variant"),
    ],
)
def test_settings_that_change_the_output_are_refused(
    base_dir: Path, config: ModelConfig, tmp_path: Path, change: dict, message: str
) -> None:
    folder = build_random_lora(tmp_path / "a", base_dir)
    edit_config(folder, **change)
    with pytest.raises(LoRAAdapterError, match=message):
        load_lora_adapter("a", folder, config, max_rank=16)


def test_weights_we_cannot_apply_are_refused(
    base_dir: Path, config: ModelConfig, tmp_path: Path
) -> None:
    folder = build_random_lora(tmp_path / "a", base_dir, targets=("q_proj",))
    weights = load_file(str(folder / "adapter_model.safetensors"))
    weights["base_model.model.lm_head.lora_A.weight"] = torch.zeros(8, 64)
    save_file(weights, str(folder / "adapter_model.safetensors"))
    with pytest.raises(LoRAAdapterError, match=r"cannot serve weight 'base_model.model.lm_head"):
        load_lora_adapter("a", folder, config, max_rank=16)


def test_an_adapter_of_another_model_is_refused(
    base_dir: Path, config: ModelConfig, tmp_path: Path
) -> None:
    folder = build_random_lora(tmp_path / "a", base_dir, targets=("k_proj",))
    weights = load_file(str(folder / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"
    weights[key] = torch.zeros(96, 8)  # k_proj's output is 64 here
    save_file(weights, str(folder / "adapter_model.safetensors"))
    with pytest.raises(LoRAAdapterError, match=r"layer 0 k_proj.*another model"):
        load_lora_adapter("a", folder, config, max_rank=16)


def test_a_half_pair_and_a_missing_layer_are_refused(
    base_dir: Path, config: ModelConfig, tmp_path: Path
) -> None:
    folder = build_random_lora(tmp_path / "a", base_dir, targets=("o_proj",))
    path = str(folder / "adapter_model.safetensors")
    weights = load_file(path)
    del weights["base_model.model.model.layers.1.self_attn.o_proj.lora_A.weight"]
    save_file(weights, path)
    with pytest.raises(LoRAAdapterError, match="layer 1 o_proj: has lora_B without its pair"):
        load_lora_adapter("a", folder, config, max_rank=16)
    build_random_lora(folder, base_dir, targets=("o_proj",))
    weights = {k.replace("layers.0.", "layers.7."): v for k, v in load_file(path).items()}
    save_file(weights, path)
    with pytest.raises(LoRAAdapterError, match="layer 7 o_proj: the model has 2 layers"):
        load_lora_adapter("a", folder, config, max_rank=16)


def test_rank_above_the_limit_is_refused(
    base_dir: Path, config: ModelConfig, tmp_path: Path
) -> None:
    folder = build_random_lora(tmp_path / "a", base_dir, rank=32)
    with pytest.raises(LoRAAdapterError, match="rank 32 exceeds --max-lora-rank 16"):
        load_lora_adapter("a", folder, config, max_rank=16)
    assert load_lora_adapter("a", folder, config, max_rank=32).rank == 32


def test_missing_files_say_what_is_missing(
    base_dir: Path, config: ModelConfig, tmp_path: Path
) -> None:
    with pytest.raises(LoRAAdapterError, match=r"no adapter_config\.json"):
        load_lora_adapter("a", tmp_path, config, max_rank=16)
    folder = build_random_lora(tmp_path / "a", base_dir)
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    with pytest.raises(LoRAAdapterError, match=r"no adapter_model.safetensors.*\.bin pickles"):
        load_lora_adapter("a", folder, config, max_rank=16)


def test_a_config_peft_itself_saved_loads(
    base_dir: Path, config: ModelConfig, tmp_path: Path
) -> None:
    """Every setting PEFT writes by default is one we either check or know to be harmless."""
    import transformers
    from peft import LoraConfig, get_peft_model

    model = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    peft.save_pretrained(tmp_path / "saved")
    adapter = load_lora_adapter("saved", tmp_path / "saved", config, max_rank=16)
    assert {p for _, p in adapter.weights} == {"q_proj", "v_proj"}
    edit_config(tmp_path / "saved", fan_in_fan_out=True)  # PEFT ignores it for nn.Linear
    load_lora_adapter("saved", tmp_path / "saved", config, max_rank=16)


def test_alpha_pattern_matches_the_modules_own_name(
    base_dir: Path, config: ModelConfig, tmp_path: Path
) -> None:
    """PEFT matches patterns against the module's name in the model it trained, so an
    adapter of a text tower (`language_model.layers...`) is matched by that name."""
    folder = build_random_lora(tmp_path / "a", base_dir, rank=4, alpha=8, targets=("q_proj",))
    path = str(folder / "adapter_model.safetensors")
    raw = {
        k.replace("model.model.layers", "model.model.language_model.layers"): v
        for k, v in load_file(path).items()
    }
    save_file(raw, path)
    edit_config(folder, alpha_pattern={"language_model.layers.0.self_attn.q_proj": 64})
    adapter = load_lora_adapter("a", folder, config, max_rank=16)
    key = "base_model.model.model.language_model.layers.{}.self_attn.q_proj.lora_B.weight"
    torch.testing.assert_close(adapter.weights[(0, "q_proj")].b, raw[key.format(0)] * 16.0)
    torch.testing.assert_close(adapter.weights[(1, "q_proj")].b, raw[key.format(1)] * 2.0)


def test_a_matrix_saved_twice_is_refused(
    base_dir: Path, config: ModelConfig, tmp_path: Path
) -> None:
    folder = build_random_lora(tmp_path / "a", base_dir, targets=("up_proj",))
    path = str(folder / "adapter_model.safetensors")
    weights = load_file(path)
    key = "base_model.model.model.layers.1.mlp.up_proj.lora_A.weight"
    weights[key.replace(".weight", ".default.weight")] = torch.zeros_like(weights[key])
    save_file(weights, path)
    with pytest.raises(LoRAAdapterError, match="layer 1 up_proj has lora_A twice"):
        load_lora_adapter("a", folder, config, max_rank=16)


def test_a_vision_towers_matrices_are_left_out(
    base_dir: Path, config: ModelConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An adapter of a vision-language model (Gemma 3's, trained on all linear layers)
    has matrices in its vision tower too, which looks like another text model's: those
    are skipped with a warning, the text model's served."""
    folder = build_random_lora(tmp_path / "a", base_dir, targets=("q_proj",))
    path = str(folder / "adapter_model.safetensors")
    text = load_file(path)
    vision = {
        f"base_model.model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj"
        f".lora_{which}.weight": torch.zeros(8, 32)
        for which in "AB"
    }
    save_file({**text, **vision}, path)
    with caplog.at_level("WARNING"):
        adapter = load_lora_adapter("a", folder, config, max_rank=16)
    assert set(adapter.weights) == {(0, "q_proj"), (1, "q_proj")}
    assert "2 matrices of the vision tower left out" in caplog.text


def test_a_part_trained_alone_and_inside_its_fusion_is_refused(
    base_dir: Path, config: ModelConfig, tmp_path: Path
) -> None:
    folder = build_random_lora(tmp_path / "a", base_dir, targets=("qkv_proj", "k_proj"))
    with pytest.raises(LoRAAdapterError, match="trains k_proj both alone and inside qkv_proj"):
        load_lora_adapter("a", folder, config, max_rank=16)
