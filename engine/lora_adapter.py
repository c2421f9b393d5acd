"""Read a PEFT LoRA adapter folder into per-projection (A, B) pairs, checked against the model.

PEFT saves `adapter_config.json` and `adapter_model.safetensors`, whose keys
name the base model's projections (`...layers.3.self_attn.q_proj.lora_A.weight`).
We serve plain LoRA on the seven Llama projections; anything whose output would
differ if ignored (DoRA, trained biases, embedding or lm_head adapters, saved
full modules) is refused at start-up with the reason, never silently dropped.
The scaling (alpha / r, or alpha / sqrt(r) for rsLoRA) is folded into B here.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from engine.config import ModelConfig
from engine.configuration_error import ConfigurationError
from engine.interleaved_rope import half_split_rows

# Each projection and the block that holds it (PEFT's module names say both).
PROJECTION_BLOCKS = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
    # Phi-3's checkpoints fuse these, so its adapters train them whole.
    "qkv_proj": "self_attn",
    "gate_up_proj": "mlp",
}
PROJECTIONS = tuple(PROJECTION_BLOCKS)
# A fused projection's parts, in the order its output concatenates them.
FUSED_PARTS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
# What most checkpoints name (and PEFT targets with "all-linear").
UNFUSED_PROJECTIONS = tuple(p for p in PROJECTIONS if p not in FUSED_PARTS)
logger = logging.getLogger(__name__)
# PEFT's key: "base_model.model." + the module's name in the trained model + the matrix.
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>(?:.*\.)?layers\.(?P<layer>\d+)\.(?:self_attn|mlp)\."
    r"(?P<projection>" + "|".join(PROJECTIONS) + r"))\.lora_(?P<which>[AB])(?:\.default)?\.weight$"
)
# A vision-language model's image side, which the engine does not run (Gemma 3's): an
# adapter's matrices there are left out; its text model's are served.
_VISION_PARTS = ("vision_tower.", "multi_modal_projector.")
# adapter_config.json settings that do not change what a trained adapter computes
# (training-time or bookkeeping settings), or that are checked below. Any other setting
# must be absent or empty: a PEFT variant we do not implement (aLoRA, layer replication,
# LoRA on raw parameters, ...) is refused, never served as plain LoRA.
_HARMLESS_SETTINGS = frozenset(
    {
        "peft_type",
        "peft_version",
        "task_type",
        "auto_mapping",
        "base_model_name_or_path",
        "revision",
        "inference_mode",
        "r",
        "target_modules",
        "exclude_modules",
        "lora_alpha",
        "lora_dropout",
        "use_rslora",
        "rank_pattern",
        "alpha_pattern",
        "layers_to_transform",
        "layers_pattern",
        "init_lora_weights",
        "loftq_config",
        "eva_config",
        "corda_config",
        "megatron_config",
        "megatron_core",
        "qalora_group_size",
        "lora_ga_config",
        "runtime_config",
        "ensure_weight_tying",
        "fan_in_fan_out",
        "bias",
    }
)
# Initialisations that also rewrite the base model's weights: the adapter is only right
# on that rewritten base, unless PEFT converted it to plain LoRA when saving.
_BASE_CHANGING_INITS = ("pissa", "olora", "corda")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


class LoRAAdapterError(ConfigurationError):
    """The adapter cannot be served as it is; the message says why. At start-up (a
    --lora-modules adapter) it stops the worker for good: restarting reads the same files."""


@dataclass(frozen=True)
class LoRAWeights:
    """One projection's update: x @ a.T @ b.T, with the scaling already in b."""

    a: torch.Tensor  # [rank, in]
    b: torch.Tensor  # [out, rank]

    @property
    def rank(self) -> int:
        return self.a.shape[0]


@dataclass(frozen=True)
class LoRAAdapter:
    name: str
    # The folder as it was named (announced so; the API compares it with what it asked for).
    path: str
    # (layer index, projection name) -> its update; projections not trained are absent.
    weights: dict[tuple[int, str], LoRAWeights]

    @property
    def rank(self) -> int:
        return max((w.rank for w in self.weights.values()), default=0)


def projection_shapes(config: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in, out) features of each projection, as the checkpoint (unfused) has them."""
    q = config.num_heads * config.head_dim
    kv = config.num_kv_heads * config.head_dim
    hidden, inter = config.hidden_size, config.intermediate_size
    return {
        "q_proj": (hidden, q),
        "k_proj": (hidden, kv),
        "v_proj": (hidden, kv),
        "o_proj": (q, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
        "qkv_proj": (hidden, q + 2 * kv),
        "gate_up_proj": (hidden, 2 * inter),
    }


def load_lora_adapter(
    name: str, folder: str | Path, config: ModelConfig, max_rank: int
) -> LoRAAdapter:
    """Read and check one adapter (fp32 on the CPU; the engine casts and moves it)."""
    path = Path(folder).expanduser()
    settings = _read_config(name, path)
    weights_file = path / WEIGHTS_FILE
    if not weights_file.is_file():
        hint = (
            " (.bin pickles are not loaded: save with safetensors)"
            if (path / "adapter_model.bin").is_file()
            else ""
        )
        raise LoRAAdapterError(f"LoRA adapter {name!r}: no {WEIGHTS_FILE} in {path}{hint}")
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    modules: dict[tuple[int, str], str] = {}
    skipped_vision = 0
    with safe_open(str(weights_file), framework="pt", device="cpu") as handle:
        for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
            if any(part in key for part in _VISION_PARTS):
                skipped_vision += 1
                continue
            match = _KEY.match(key)
            if match is None:
                raise LoRAAdapterError(
                    f"LoRA adapter {name!r}: cannot serve weight {key!r}; only LoRA A/B "
                    f"matrices of {', '.join(PROJECTIONS)} are supported"
                )
            layer, projection, which = int(match["layer"]), match["projection"], match["which"]
            pair = pairs.setdefault((layer, projection), {})
            if which in pair:
                raise LoRAAdapterError(
                    f"LoRA adapter {name!r}: layer {layer} {projection} has lora_{which} twice "
                    f"(the second is {key!r})"
                )
            pair[which] = handle.get_tensor(key).float()
            # Its name in the trained model: what PEFT matches alpha_pattern against.
            modules[(layer, projection)] = match["module"]
    if skipped_vision:
        logger.warning(
            "LoRA adapter %r: %d matrices of the vision tower left out (images are not "
            "served); its text model's are",
            name,
            skipped_vision,
        )
    if not pairs:
        raise LoRAAdapterError(f"LoRA adapter {name!r}: {weights_file} holds no LoRA weights")
    shapes = projection_shapes(config)
    weights: dict[tuple[int, str], LoRAWeights] = {}
    for (layer, projection), pair in sorted(pairs.items()):
        where = f"LoRA adapter {name!r}, layer {layer} {projection}"
        if set(pair) != {"A", "B"}:
            raise LoRAAdapterError(f"{where}: has lora_{''.join(pair)} without its pair")
        if not 0 <= layer < config.num_layers:
            raise LoRAAdapterError(f"{where}: the model has {config.num_layers} layers")
        a, b = pair["A"], pair["B"]
        in_features, out_features = shapes[projection]
        rank = a.shape[0]
        if a.shape != (rank, in_features) or b.shape != (out_features, rank):
            raise LoRAAdapterError(
                f"{where}: A {tuple(a.shape)} and B {tuple(b.shape)} do not fit a "
                f"{in_features} -> {out_features} projection (trained on another model?)"
            )
        if rank > max_rank:
            raise LoRAAdapterError(
                f"{where}: rank {rank} exceeds --max-lora-rank {max_rank}; raise it"
            )
        scaling = _scaling(settings, modules[(layer, projection)], rank)
        update = LoRAWeights(a.contiguous(), (b * scaling).contiguous())
        for part, part_update in _split_fused(projection, update, shapes):
            if part != projection and (layer, part) in pairs:
                raise LoRAAdapterError(
                    f"LoRA adapter {name!r}, layer {layer}: trains {part} both alone and "
                    f"inside {projection}"
                )
            if config.interleaved_rope and part in ("q_proj", "k_proj"):
                # The model's query/key rows were reordered as it loaded: B's follow.
                b_rows = half_split_rows(part_update.b, config.head_dim, config.rotary_dim)
                part_update = LoRAWeights(part_update.a, b_rows)
            weights[(layer, part)] = part_update
    return LoRAAdapter(name, str(folder), weights)


def _split_fused(
    projection: str, update: LoRAWeights, shapes: dict[str, tuple[int, int]]
) -> list[tuple[str, LoRAWeights]]:
    """A fused projection's update as its parts' (each the rows of B for its part of the
    output, all sharing A): what the engine's fused layers apply, for any model."""
    parts = FUSED_PARTS.get(projection)
    if parts is None:
        return [(projection, update)]
    split, start = [], 0
    for part in parts:
        size = shapes[part][1]
        split.append((part, LoRAWeights(update.a, update.b[start : start + size].contiguous())))
        start += size
    return split


def _read_config(name: str, path: Path) -> dict[str, Any]:
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise LoRAAdapterError(f"LoRA adapter {name!r}: no {CONFIG_FILE} in {path}")
    try:
        settings = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise LoRAAdapterError(f"LoRA adapter {name!r}: {CONFIG_FILE} is not JSON: {exc}") from None
    if not isinstance(settings, dict):
        raise LoRAAdapterError(f"LoRA adapter {name!r}: {CONFIG_FILE} must be a JSON object")
    init = str(settings.get("init_lora_weights", True)).lower()
    refusals = {
        "peft_type": (settings.get("peft_type", "LORA") != "LORA", "only LORA adapters"),
        "use_dora": (bool(settings.get("use_dora")), "DoRA is not supported"),
        "bias": (settings.get("bias", "none") != "none", "trained biases are not supported"),
        "modules_to_save": (
            bool(settings.get("modules_to_save")),
            "fully trained modules (modules_to_save) are not supported",
        ),
        "init_lora_weights": (
            init.startswith(_BASE_CHANGING_INITS),
            "this initialisation also changes the base weights; save the adapter with "
            "PEFT's conversion to plain LoRA (path_initial_model_for_weight_conversion)",
        ),
    }
    refusals |= {
        key: (bool(value), "a PEFT setting conveyor does not implement")
        for key, value in settings.items()
        if key not in _HARMLESS_SETTINGS and key not in refusals
    }
    for key, (refused, why) in refusals.items():
        if refused:
            raise LoRAAdapterError(f"LoRA adapter {name!r}: {key}={settings.get(key)!r}: {why}")
    if not isinstance(settings.get("lora_alpha", 8), int | float):
        raise LoRAAdapterError(f"LoRA adapter {name!r}: lora_alpha must be a number")
    return settings


def _scaling(settings: dict[str, Any], module: str, rank: int) -> float:
    """PEFT's scaling for `module`: its alpha (alpha_pattern first) over r, or over sqrt(r)."""
    alpha = _pattern_value(
        settings.get("alpha_pattern") or {}, module, settings.get("lora_alpha", 8)
    )
    divisor = math.sqrt(rank) if settings.get("use_rslora") else rank
    return float(alpha) / divisor


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rule: the first pattern that matches the end of the module's dotted name."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default
