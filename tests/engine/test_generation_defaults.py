"""--generation-config and --override-generation-config: which sampling defaults are served."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.generation_defaults import GenerationConfigError, generation_defaults, parse_overrides

QWEN3 = {
    "bos_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "temperature": 0.6,
    "top_k": 20,
    "top_p": 0.95,
    "transformers_version": "4.51.0",
}


def _folder(tmp_path: Path, name: str, config: dict) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "generation_config.json").write_text(json.dumps(config))
    return folder


def test_auto_serves_the_models_sampling_knobs_only(tmp_path: Path) -> None:
    model = _folder(tmp_path, "model", QWEN3)
    assert generation_defaults(model, "auto", {}) == {
        "temperature": 0.6,
        "top_k": 20,
        "top_p": 0.95,
    }
    assert generation_defaults(tmp_path, "auto", {}) == {}  # a model without the file


def test_a_file_restating_transformers_defaults_changes_nothing(tmp_path: Path) -> None:
    """As vLLM reads it (the file's difference from GenerationConfig()): a restated
    top_k of 50 is not a default to serve, while other values are."""
    restating = {"top_k": 50, "temperature": 1.0, "top_p": 1.0, "repetition_penalty": 1.0}
    model = _folder(tmp_path, "model", {**restating, "min_p": 0.05})
    assert generation_defaults(model, "auto", {}) == {"min_p": 0.05}
    assert generation_defaults(model, "auto", {"top_k": 50}) == {"min_p": 0.05, "top_k": 50}


def test_vllm_serves_none_and_a_folder_serves_its_file(tmp_path: Path) -> None:
    model = _folder(tmp_path, "model", QWEN3)
    assert generation_defaults(model, "vllm", {}) == {}
    tuned = _folder(tmp_path, "tuned", {"temperature": 0.2, "max_new_tokens": 64})
    served = generation_defaults(model, str(tuned), {})
    assert served == {"temperature": 0.2, "max_new_tokens": 64}
    with pytest.raises(GenerationConfigError, match=r"no generation_config\.json"):
        generation_defaults(model, str(tmp_path / "missing"), {})


def test_overrides_go_over_whichever_was_chosen(tmp_path: Path) -> None:
    model = _folder(tmp_path, "model", QWEN3)
    overrides = parse_overrides('{"temperature": 0.0, "max_new_tokens": 512.0}')
    assert overrides == {"temperature": 0.0, "max_new_tokens": 512}
    assert isinstance(overrides["max_new_tokens"], int)
    assert generation_defaults(model, "auto", overrides) == {
        "temperature": 0.0,
        "top_k": 20,
        "top_p": 0.95,
        "max_new_tokens": 512,
    }
    assert generation_defaults(model, "vllm", overrides) == overrides
    assert parse_overrides(None) == {} and parse_overrides("") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{temperature: 1}", "not JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"temp": 0.5}', "has temp; it takes temperature"),
        ('{"temperature": "hot"}', "temperature must be a number"),
        ('{"top_p": true}', "top_p must be a number"),
        ('{"top_k": 2.5}', "top_k must be an integer"),
        ('{"max_new_tokens": 0}', "max_new_tokens must be at least 1"),
    ],
)
def test_a_bad_override_is_refused_saying_why(text: str, message: str) -> None:
    with pytest.raises(GenerationConfigError, match=message):
        parse_overrides(text)


def test_a_bad_model_file_is_refused_naming_it(tmp_path: Path) -> None:
    model = _folder(tmp_path, "model", {"top_k": "twenty"})
    with pytest.raises(GenerationConfigError, match=r"generation_config\.json: top_k"):
        generation_defaults(model, "auto", {})
    (model / "generation_config.json").write_text("{not json")
    with pytest.raises(GenerationConfigError, match="cannot read"):
        generation_defaults(model, "auto", {})
