"""Qwen's vision-language checkpoints serve their text model: what HF's whole model
generates from text alone, whichever layout the checkpoint was saved in."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from engine.fp8_checkpoint import dequantize
from engine.llm import LLM, greedy
from engine.tokenizer import Tokenizer
from tests.engine.int_quantized_variants import is_projection, write_awq_variant
from tests.engine.quantized_variants import assert_same_outputs, quantize_fp8, write_variants
from tests.engine.test_parity import assert_prompt_logprobs_match, hf_greedy

# The rotation's split of each head's pairs among time, height and width (half of
# head_dim in all).
_MROPE_SECTIONS = {16: [2, 3, 3], 32: [4, 6, 6]}
# (architecture, the text family its weights come from, the config classes).
_QWEN_VL = {
    "qwen2_vl": ("qwen2", "Qwen2VLConfig", "Qwen2VLForConditionalGeneration"),
    "qwen2_5_vl": ("qwen2", "Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration"),
    "qwen3_vl": ("qwen3", "Qwen3VLConfig", "Qwen3VLForConditionalGeneration"),
    "qwen3_vl_moe": ("qwen3_moe", "Qwen3VLMoeConfig", "Qwen3VLMoeForConditionalGeneration"),
}
# Tiny vision towers, by the names each generation's vision config takes.
_TOWER = dict(depth=1, num_heads=2, patch_size=8)
_WIDTHS = dict(hidden_size=32, intermediate_size=64, out_hidden_size=64)
_QWEN3_TOWER = {**_TOWER, **_WIDTHS, "num_position_embeddings": 16, "deepstack_visual_indexes": [0]}
_VISION = {
    "qwen2_vl": {**_TOWER, "embed_dim": 32, "hidden_size": 64},
    "qwen2_5_vl": {**_TOWER, **_WIDTHS, "fullatt_block_indexes": [0]},
    "qwen3_vl": _QWEN3_TOWER,
    "qwen3_vl_moe": _QWEN3_TOWER,
}


def _qwen_vl(
    model_type: str, make_random_model: Callable[[str], Path], tie: bool | None, inner_tie: bool
) -> tuple[transformers.PreTrainedModel, Path]:
    """HF's vision-language model with a random text model's weights (peaked enough for
    greedy parity) and a tiny random vision tower, and that text model's folder (for its
    tokenizer); `tie`: the outer flag (None: unset), `inner_tie`: the text config's."""
    family, config_class, model_class = _QWEN_VL[model_type]
    text_folder = make_random_model(family)
    text = json.loads((text_folder / "config.json").read_text())
    # Qwen3-VL MoE's config has no norm_topk_prob: its router always renormalises.
    for key in ("architectures", "model_type", "transformers_version", "norm_topk_prob"):
        text.pop(key, None)
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    rope = dict(text.pop("rope_parameters", None) or {"rope_type": "default"})
    rope.update(mrope_section=_MROPE_SECTIONS[head_dim], rope_theta=text.pop("rope_theta", 1e4))
    if model_type.startswith("qwen3"):
        rope["mrope_interleaved"] = True
    text["rope_parameters"] = rope
    text["tie_word_embeddings"] = inner_tie
    outer: dict[str, Any] = {} if tie is None else {"tie_word_embeddings": tie}
    config = getattr(transformers, config_class)(
        text_config=text, vision_config=_VISION[model_type], **outer
    )
    torch.manual_seed(6)
    hf = getattr(transformers, model_class)(config).eval()
    text_model = transformers.AutoModelForCausalLM.from_pretrained(text_folder)
    hf.model.language_model.load_state_dict(text_model.model.state_dict())
    if not config.tie_word_embeddings:
        # A head of its own, apart from the embeddings even where the text model ties.
        head = torch.randn(hf.lm_head.weight.shape, generator=torch.Generator().manual_seed(4))
        hf.lm_head.weight.data.copy_(head * 0.3)
    return hf, text_folder


def _save(hf: transformers.PreTrainedModel, text_folder: Path, folder: Path) -> Path:
    hf.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((text_folder / name).read_bytes())
    return folder


def _flatten_to_release_layout(folder: Path) -> None:
    """Qwen2.5-VL as its release ships: one flat config (the text model's keys at the
    top), the text model under `model.` and the vision tower under `visual.`."""
    config = json.loads((folder / "config.json").read_text())
    text = config.pop("text_config")
    rope = text.pop("rope_parameters")
    config.update(text, rope_theta=rope.pop("rope_theta"))
    config["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
    (folder / "config.json").write_text(json.dumps(config))
    weights = load_file(folder / "model.safetensors")
    renamed = {
        name.replace("model.language_model.", "model.").replace("model.visual.", "visual."): t
        for name, t in weights.items()
    }
    assert any(name.startswith("visual.") for name in renamed)
    save_file(renamed, folder / "model.safetensors", metadata={"format": "pt"})


def _transpose_expert_stacks(folder: Path) -> None:
    """Qwen3-VL MoE's experts as its release stores them: [experts, in, out]."""
    weights = load_file(folder / "model.safetensors")
    stacks = [name for name in weights if name.endswith(("experts.gate_up_proj", "down_proj"))]
    assert stacks
    for name in stacks:
        weights[name] = weights[name].transpose(1, 2).contiguous()
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize(
    ("model_type", "tie", "inner_tie", "layout", "tied"),
    [
        # Tied by the text config's flag alone, which transformers lifts outward.
        ("qwen2_vl", None, True, "transformers", True),
        # The 3B's release ties its head; the 7B's does not.
        ("qwen2_5_vl", True, True, "release", True),
        ("qwen2_5_vl", False, False, "transformers", False),
        ("qwen3_vl", True, True, "transformers", True),
        ("qwen3_vl_moe", False, False, "transformers", False),
        ("qwen3_vl_moe", False, False, "release", False),
        # A fine-tune transformers re-saved: the outer flag false decides (the inner one
        # is its text class's default), and the head of its own is saved.
        ("qwen3_vl", False, True, "transformers", False),
    ],
)
def test_a_qwen_vision_language_checkpoint_generates_what_hf_does_from_text(
    model_type: str,
    tie: bool | None,
    inner_tie: bool,
    layout: str,
    tied: bool,
    make_random_model: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    """Greedy tokens and prompt logprobs equal HF's whole model given text alone: the
    multimodal rotation turns text as the plain one does, the vision tower is skipped,
    the head tied as HF (or vLLM, for Qwen3-VL's inner flag) ties it, and Qwen3-VL
    MoE's expert stacks read in either orientation."""
    hf, text_folder = _qwen_vl(model_type, make_random_model, tie, inner_tie)
    folder = _save(hf, text_folder, tmp_path / model_type)
    if layout == "release" and model_type == "qwen2_5_vl":
        _flatten_to_release_layout(folder)
    elif layout == "release":
        _transpose_expert_stacks(folder)
    llm = LLM(str(folder), kv_cache_memory=64 << 20)
    mc = llm.engine.model_config
    assert mc.architecture == hf.config.architectures[0]
    hf_tied = hf.lm_head.weight.data_ptr() == hf.model.language_model.embed_tokens.weight.data_ptr()
    assert mc.tie_word_embeddings == hf_tied == tied
    assert mc.rope.rope_type == "default"
    torch.manual_seed(3)
    prompts = [torch.randint(3, 49152, (n,)).tolist() for n in (6, 40)]
    results = llm.generate(prompts, greedy(16, min_tokens=16))
    for prompt, result in zip(prompts, results, strict=True):
        assert result.token_ids == hf_greedy(hf, prompt, 16)
    assert_prompt_logprobs_match(llm, hf, prompts[1])


def test_expert_stacks_of_another_shape_are_an_error_naming_them(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """A stack neither orientation of the config's sizes fits is refused, never read
    as garbage experts."""
    folder = _save(*_qwen_vl("qwen3_vl_moe", make_random_model, False, False), tmp_path / "moe")
    weights = load_file(folder / "model.safetensors")
    name = "model.language_model.layers.0.mlp.experts.down_proj"
    weights[name] = weights[name][:, :, :-1].contiguous()
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"layers\.0\.mlp\.experts\.down_proj.*stacked as"):
        LLM(str(folder), kv_cache_memory=64 << 20)


def test_an_awq_release_serves_the_weights_its_codes_encode(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """Qwen2.5-VL's AWQ releases (release layout, the vision tower left unquantized by
    `modules_to_not_convert`): tokens and logprobs equal a plain checkpoint of the
    weights the text model's codes encode."""
    folder = _save(*_qwen_vl("qwen2_5_vl", make_random_model, True, True), tmp_path / "vl")
    _flatten_to_release_layout(folder)
    awq, reference = tmp_path / "awq", tmp_path / "reference"
    write_awq_variant(
        folder, awq, reference, lambda name: is_projection(name) and "visual" not in name
    )
    config = json.loads((awq / "config.json").read_text())
    config["quantization_config"]["modules_to_not_convert"] = ["visual"]
    (awq / "config.json").write_text(json.dumps(config))
    assert_same_outputs(awq, reference)


def test_an_fp8_release_with_fused_expert_stacks_serves_the_weights_they_encode(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """Qwen3-VL MoE in block FP8 with its experts left fused ([experts, in, out] in e4m3,
    one block-scale grid per expert): tokens and logprobs equal a plain checkpoint of
    the weights the codes encode."""
    folder = _save(*_qwen_vl("qwen3_vl_moe", make_random_model, False, False), tmp_path / "moe")
    _transpose_expert_stacks(folder)
    block = [32, 32]
    stored: dict[str, torch.Tensor] = {}
    plain: dict[str, torch.Tensor] = {}
    for name, tensor in load_file(folder / "model.safetensors").items():
        stacked = tensor.dim() == 3 and ".experts." in name
        if stacked or (is_projection(name) and "visual" not in name):
            matrices = list(tensor.float()) if stacked else [tensor.float()]
            codes, scales = zip(*(quantize_fp8(m, block) for m in matrices), strict=True)
            encoded = [
                dequantize(c, s, torch.float32, (32, 32))
                for c, s in zip(codes, scales, strict=True)
            ]
            pick = torch.stack if stacked else (lambda parts: parts[0])
            stored[name], stored[name + "_scale_inv"] = pick(codes), pick(scales)
            plain[name] = pick(encoded)
        else:
            stored[name] = plain[name] = tensor
    assert any(t.dim() == 3 and t.dtype == torch.float8_e4m3fn for t in stored.values())
    fp8, reference = tmp_path / "fp8", tmp_path / "reference"
    quantization = {
        "quant_method": "fp8",
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "weight_block_size": block,
    }
    write_variants(folder, {fp8: (stored, quantization), reference: (plain, None)})
    assert_same_outputs(fp8, reference)


def test_the_processor_template_reaches_api_processes(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """A release whose chat template is the processor's (chat_template.json): the
    worker publishes it with the tokenizer files, and an API process's tokenizer built
    from them renders chats as the worker's does."""
    from workers.announce import tokenizer_fields

    folder = _save(*_qwen_vl("qwen2_5_vl", make_random_model, True, True), tmp_path / "vl")
    template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    llm = LLM(str(folder), kv_cache_memory=64 << 20)
    chat = [{"role": "user", "content": "hi"}]
    assert llm.tokenizer.render_chat(chat) == "[user] hi\n"
    published = tmp_path / "published"
    published.mkdir()
    for name, content in tokenizer_fields(llm.engine, {}).items():
        if name != "digest":
            (published / name).write_text(content)
    assert Tokenizer.load(published).render_chat(chat) == "[user] hi\n"
