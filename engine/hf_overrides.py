"""vLLM's --hf-overrides: a JSON object laid over the checkpoint's config.json.

Why: serving a model other than as its files say without editing them, the way vLLM
users do it. Qwen's own instructions stretch Qwen2.5/Qwen3 to 128K tokens with
`--hf-overrides '{"rope_scaling": {"rope_type": "yarn", "factor": 4.0,
"original_max_position_embeddings": 32768}}'`. As in vLLM, a key's value replaces the
file's, except a sub-config (`text_config`, ...), which is overridden key by key.
"""

from __future__ import annotations

from typing import Any

from engine.json_flag import json_object_flag


def parse_hf_overrides(value: str | dict[str, Any] | None) -> dict[str, Any]:
    """The overrides as a dict; a ValueError naming the flag when they are not a JSON object."""
    value = json_object_flag(value, "--hf-overrides")
    scaling = value.get("rope_scaling")
    if scaling is not None and not isinstance(scaling, dict):
        raise ValueError(f"--hf-overrides: rope_scaling must be an object or null, got {scaling!r}")
    return value


def apply_hf_overrides(hf: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`hf` (a config.json) with `overrides` laid over it; neither is changed."""
    merged = dict(hf)
    for key, value in overrides.items():
        current = merged.get(key)
        if _is_sub_config(key) and isinstance(current, dict) and isinstance(value, dict):
            merged[key] = apply_hf_overrides(current, value)
        else:
            merged[key] = value
    return _rope_where_the_file_keeps_it(merged, overrides)


def _rope_where_the_file_keeps_it(
    merged: dict[str, Any], overrides: dict[str, Any]
) -> dict[str, Any]:
    """Configs saved by transformers >= 5 keep the rotation in `rope_parameters`, which
    the engine reads before the older `rope_scaling` and `rope_theta`: an override in the
    older form (the one Qwen's instructions give) goes there too, keeping the file's theta
    unless it is overridden as well. Per-layer-kind parameters (Gemma 3's) are left alone."""
    params = merged.get("rope_parameters")
    if "rope_parameters" in overrides or not isinstance(params, dict):
        return merged
    if any(isinstance(value, dict) for value in params.values()):
        return merged
    theta = overrides.get("rope_theta", params.get("rope_theta", merged.get("rope_theta")))
    if "rope_scaling" in overrides:
        scaling = overrides["rope_scaling"] or {"rope_type": "default"}
        params = {key: value for key, value in scaling.items() if key != "type"}
        params.setdefault("rope_type", scaling.get("type", "default"))
    elif "rope_theta" not in overrides:
        return merged
    if theta is not None:
        params = {**params, "rope_theta": theta}
    return {**merged, "rope_parameters": params}


def _is_sub_config(key: str) -> bool:
    """A nested model config (transformers makes it a config object of its own, which
    vLLM updates field by field); `quantization_config` is a plain dict there, replaced."""
    return key.endswith("_config") and key != "quantization_config"
