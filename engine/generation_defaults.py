"""The sampling defaults a served model gives requests that leave a knob unset.

vLLM's `--generation-config`: `auto` takes them from the model's
`generation_config.json` (Qwen3's temperature 0.6, top_p 0.95, top_k 20, ...),
`vllm` uses none (OpenAI's defaults), and a folder takes that folder's
`generation_config.json`. `--override-generation-config` (JSON) goes over
whichever was chosen. `max_new_tokens` caps every request's completion length,
as in vLLM. Plain JSON, no torch: API processes read these too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.configuration_error import ConfigurationError
from engine.json_flag import json_object_flag

# The knobs vLLM reads from a generation config (any other key there is not sampling's).
GENERATION_DEFAULT_KEYS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "max_new_tokens",
)
_INTEGER_KEYS = ("top_k", "max_new_tokens")
# transformers' GenerationConfig defaults: vLLM reads a model's file as its difference from
# these (`to_diff_dict`), so a file restating one (top_k 50, often) changes nothing there.
_HF_DEFAULTS: dict[str, int | float] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 50,
    "repetition_penalty": 1.0,
}
GENERATION_CONFIG_FILE = "generation_config.json"


class GenerationConfigError(ConfigurationError):
    """A generation config or override that cannot be used; says which value and why."""


def _number(key: str, value: Any, source: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GenerationConfigError(f"{source}: {key} must be a number, got {value!r}")
    if key in _INTEGER_KEYS:
        if value != int(value):
            raise GenerationConfigError(f"{source}: {key} must be an integer, got {value!r}")
        value = int(value)
    if key == "max_new_tokens" and value < 1:
        raise GenerationConfigError(f"{source}: max_new_tokens must be at least 1, got {value}")
    return value


def parse_overrides(text: str | None) -> dict[str, int | float]:
    """--override-generation-config's JSON object; unknown keys are refused (typos would
    otherwise change nothing, silently)."""
    source = "--override-generation-config"
    data = json_object_flag(text, source, GenerationConfigError)
    unknown = sorted(set(data) - set(GENERATION_DEFAULT_KEYS))
    if unknown:
        raise GenerationConfigError(
            f"{source} has {', '.join(unknown)}; it takes {', '.join(GENERATION_DEFAULT_KEYS)}"
        )
    return {key: _number(key, value, source) for key, value in data.items()}


def _from_file(path: Path) -> dict[str, int | float]:
    """The sampling knobs of one generation_config.json that differ from transformers'
    defaults; others (eos ids, do_sample) skipped."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise GenerationConfigError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise GenerationConfigError(f"{path} is not a JSON object")
    found: dict[str, int | float] = {}
    for key in GENERATION_DEFAULT_KEYS:
        value = data.get(key)
        if value is not None and value != _HF_DEFAULTS.get(key):
            found[key] = _number(key, value, str(path))
    return found


def check_source(mode: str) -> None:
    """--generation-config FOLDER must hold the file (auto and vllm name no folder):
    checked before a model loads, and again when the defaults are read."""
    if mode in ("auto", "vllm"):
        return
    if not (Path(mode).expanduser() / GENERATION_CONFIG_FILE).is_file():
        raise GenerationConfigError(
            f"--generation-config {mode}: no {GENERATION_CONFIG_FILE} in that folder "
            "(use auto, vllm or a folder holding one)"
        )


def generation_defaults(
    model_dir: Path, mode: str, overrides: dict[str, int | float]
) -> dict[str, int | float]:
    """The defaults to serve: from the model (`auto`), none (`vllm`) or a folder's file,
    then the overrides."""
    check_source(mode)
    if mode == "vllm":
        found: dict[str, int | float] = {}
    else:
        folder = model_dir if mode == "auto" else Path(mode).expanduser()
        path = folder / GENERATION_CONFIG_FILE
        found = _from_file(path) if path.is_file() else {}
    return {**found, **overrides}
