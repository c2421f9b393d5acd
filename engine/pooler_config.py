"""How an embedding model turns a prompt's hidden states into one vector.

vLLM's `--pooler-config` (and its older `--override-pooler-config`): which
positions are pooled (`LAST` token, `MEAN` of all, or the first, `CLS`) and
whether the vector is L2-normalised. A sentence-transformers folder states
its own pooling in `modules.json` + `1_Pooling/config.json` (and whether a
`Normalize` module follows); those are the model's defaults, and flags
override them key by key, as in vLLM. Without either, a decoder model pools
its LAST token, normalised: what e5-mistral and gte-Qwen2 do; an encoder (BERT)
its first, CLS, as vLLM pools them.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


class PoolingType(enum.Enum):
    LAST = "LAST"
    MEAN = "MEAN"
    CLS = "CLS"


class PoolerConfigError(ValueError):
    """A --pooler-config that cannot be used, or a model folder's pooling we do not run."""


# sentence-transformers' pooling_mode_* switches, in the order we prefer them.
_SENTENCE_TRANSFORMERS_MODES = {
    "pooling_mode_lasttoken": PoolingType.LAST,
    "pooling_mode_mean_tokens": PoolingType.MEAN,
    "pooling_mode_cls_token": PoolingType.CLS,
}


# vLLM's pooler-config keys that mean nothing for embeddings here, with why.
_REFUSED_KEYS = {
    "max_embed_len": "inputs longer than the model's context are not embedded in pieces",
    "step_tag_id": "it applies to reward models, which are not served",
    "returned_token_ids": "it applies to reward models, which are not served",
}


@dataclass(frozen=True)
class PoolerConfig:
    pooling_type: PoolingType = PoolingType.LAST
    normalize: bool = True
    # Requests that name no `dimensions` get this many (matryoshka models; None: all).
    dimensions: int | None = None
    # vLLM's switch for chunked prefill of embedding prompts: always on here, so any
    # value is accepted (a copied vLLM command line keeps working).
    enable_chunked_processing: bool | None = None
    # A classifier's default for requests that do not say: probabilities (softmax; a
    # sigmoid for one label) or logits. vLLM's key; `activation` and `softmax` are its
    # older names. None: probabilities. Embedding models refuse it (llm_engine.py).
    use_activation: bool | None = None

    @property
    def pools_every_row(self) -> bool:
        """MEAN and CLS read rows a prefix-cache hit would skip; LAST reads the last only."""
        return self.pooling_type is not PoolingType.LAST

    @classmethod
    def parse(cls, value: PoolerConfig | dict[str, Any] | str | None) -> dict[str, Any]:
        """The keys a flag sets, checked (vLLM's JSON; pooling_type in any case)."""
        if value is None:
            return {}
        if isinstance(value, PoolerConfig):
            return {f.name: getattr(value, f.name) for f in fields(cls)}
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise PoolerConfigError(f"pooler_config: not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise PoolerConfigError("pooler_config: must be a JSON object")
        value = dict(value)
        for older in ("activation", "softmax"):  # vLLM's older names; softmax wins, as there
            if value.get(older) is not None:
                value["use_activation"] = value[older]
            value.pop(older, None)
        known = {f.name for f in fields(cls)}
        refused = sorted(set(value) & set(_REFUSED_KEYS))
        if refused:
            raise PoolerConfigError(
                f"pooler_config: {refused[0]!r} is not supported: {_REFUSED_KEYS[refused[0]]}"
            )
        unknown = sorted(set(value) - known)
        if unknown:
            raise PoolerConfigError(
                f"pooler_config: {unknown[0]!r} is not supported; supported: {sorted(known)}"
            )
        parsed: dict[str, Any] = {}
        if value.get("pooling_type") is not None:
            name = str(value["pooling_type"]).upper()
            try:
                parsed["pooling_type"] = PoolingType(name)
            except ValueError:
                raise PoolerConfigError(
                    f"pooler_config: pooling_type {value['pooling_type']!r} is not one of "
                    f"{[t.value for t in PoolingType]}"
                ) from None
        if value.get("normalize") is not None:
            if not isinstance(value["normalize"], bool):
                raise PoolerConfigError("pooler_config: normalize must be true or false")
            parsed["normalize"] = value["normalize"]
        dims = value.get("dimensions")
        if dims is not None:
            if not isinstance(dims, int) or isinstance(dims, bool) or dims < 1:
                raise PoolerConfigError("pooler_config: dimensions must be a positive integer")
            parsed["dimensions"] = dims
        if value.get("use_activation") is not None:
            if not isinstance(value["use_activation"], bool):
                raise PoolerConfigError("pooler_config: use_activation must be true or false")
            parsed["use_activation"] = value["use_activation"]
        return parsed

    @classmethod
    def resolve(
        cls,
        folder: Path,
        flag: PoolerConfig | dict[str, Any] | str | None,
        default: PoolingType = PoolingType.LAST,
    ) -> PoolerConfig:
        """The model folder's own pooling (sentence-transformers), overridden by the flag;
        `default`: the pooling where neither says (an encoder's is CLS)."""
        found = {"pooling_type": default, **sentence_transformers_pooling(folder)}
        return cls(**{**found, **cls.parse(flag)})


def sentence_transformers_pooling(folder: Path) -> dict[str, Any]:
    """What a sentence-transformers folder says about pooling ({} if it is not one)."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return {}
    try:
        modules = json.loads(modules_file.read_text())
    except ValueError as exc:
        raise PoolerConfigError(f"{modules_file}: not valid JSON: {exc}") from None
    if not isinstance(modules, list):
        return {}
    found: dict[str, Any] = {"normalize": False}
    for module in modules:
        if not isinstance(module, dict):
            continue
        kind = str(module.get("type", ""))
        if kind.endswith(".Normalize"):
            found["normalize"] = True
        elif kind.endswith(".Pooling"):
            found.update(_pooling_module(folder / str(module.get("path", ""))))
    return found


def _pooling_module(path: Path) -> dict[str, Any]:
    config_file = path / "config.json"
    if not config_file.is_file():
        return {}
    config = json.loads(config_file.read_text())
    mode = config.get("pooling_mode")
    if isinstance(mode, str):
        by_name = {"lasttoken": "LAST", "mean": "MEAN", "cls": "CLS"}
        if mode not in by_name:
            raise PoolerConfigError(f"{config_file}: pooling_mode {mode!r} is not supported")
        return {"pooling_type": PoolingType(by_name[mode])}
    chosen = [kind for key, kind in _SENTENCE_TRANSFORMERS_MODES.items() if config.get(key)]
    others = [
        key
        for key, on in config.items()
        if key.startswith("pooling_mode_") and on and key not in _SENTENCE_TRANSFORMERS_MODES
    ]
    if others or len(chosen) > 1:
        raise PoolerConfigError(
            f"{config_file}: pooling {sorted(others) or [c.value for c in chosen]} is not "
            "supported (one of lasttoken, mean_tokens, cls_token)"
        )
    return {"pooling_type": chosen[0]} if chosen else {}
