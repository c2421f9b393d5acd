"""Which quantized format a checkpoint's weights are stored in, from its config.

FP8 (`quant_method: "fp8"`, engine/fp8_checkpoint.py: DeepSeek's and Qwen's
`-FP8` releases, scales named `weight_scale_inv`), compressed-tensors' FP8
schemes (llm-compressor's `-FP8`/`-FP8-dynamic`/`-FP8-block` releases: the
same e4m3 weights with scales named `weight_scale`, one per tensor, output
channel or tile; read as FP8 here) and MXFP4 (`"mxfp4"`, gpt-oss's experts:
engine/mxfp4_checkpoint.py); packed-integer weights (`"gptq"`, `"awq"` and
compressed-tensors' integer schemes: W4A16, W8A16, W8A8-int8;
engine/int_checkpoint.py); every other method (bitsandbytes, HQQ, Marlin's
repacked layouts, ...) is refused by name at start-up, not loaded as garbage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METHODS = ("fp8", "mxfp4", "compressed-tensors", "gptq", "awq")
FP8_SCALE_SUFFIX = "_scale_inv"
COMPRESSED_TENSORS_SCALE_SUFFIX = "_scale"
# Either name, whichever the checkpoint's files use (`"_scale_inv|_scale"`).
PER_TENSOR_SCALE_SUFFIXES = f"{FP8_SCALE_SUFFIX}|{COMPRESSED_TENSORS_SCALE_SUFFIX}"
_FP8_STRATEGIES = ("tensor", "channel", "block")
_INT_KINDS = {"int2": 2, "int4": 4, "int8": 8}
_INT_STRATEGIES = ("tensor", "channel", "group")
# How compressed-tensors stores integer codes: packed into int32 words, or one int8 each.
_INT_FORMATS = ("pack-quantized", "int-quantized", "naive-quantized")


@dataclass(frozen=True)
class IntWeights:
    """How a packed-integer checkpoint's codes turn into weights:
    (code - zero) * scale, one scale (and zero) per group of input columns."""

    bits: int  # 2, 4 or 8: a whole number of codes per int32 word
    # The configured input columns per scale (the last group of a row cut short), one
    # per scheme; a matrix takes the one its scales' count fits. Empty: one group a row.
    group_sizes: tuple[int, ...]
    # GPTQ's original format stores each zero point less one ("gptq"; not "gptq_v2").
    zero_offset: int = 0


@dataclass(frozen=True)
class WeightQuantization:
    # "fp8" (compressed-tensors' FP8 too), "mxfp4", "gptq", "awq" or "int"
    # (compressed-tensors' integer schemes)
    method: str
    # Each scale's tile of the matrix (rows, columns); None: one scale per matrix, or
    # one per output channel (a [out, 1] scale).
    block_size: tuple[int, int] | None
    # What a weight's scale is named after it: `<weight name><suffix>`; two names joined
    # by "|" when the config does not say which (the files do).
    scale_suffix: str = FP8_SCALE_SUFFIX
    int_weights: IntWeights | None = None


def sidecar_quantization(folder: Path) -> dict[str, Any] | None:
    """The quantization_config of an older GPTQ or AWQ export, which config.json does not
    carry: AutoGPTQ's `quantize_config.json` or AutoAWQ's `quant_config.json` (as vLLM
    reads them); the method from the file, else from the keys each tool writes."""
    for name in ("quantize_config.json", "quant_config.json"):
        file = folder / name
        if not file.is_file():
            continue
        config = json.loads(file.read_text())
        if not isinstance(config, dict):
            continue
        awq = "w_bit" in config or "zero_point" in config or "version" in config
        return {"quant_method": "awq" if awq else "gptq", **config}
    return None


def weight_quantization(hf: dict[str, Any]) -> WeightQuantization | None:
    """A quantized checkpoint's settings, None for a plain one; methods the engine
    cannot dequantize are refused."""
    # Older compressed-tensors exports say compression_config; a vision-language model
    # may keep it with its text model's config.
    quantization = (
        hf.get("quantization_config")
        or hf.get("compression_config")
        or (hf.get("text_config") or {}).get("quantization_config")
    )
    if not quantization:
        return None
    method = str(quantization.get("quant_method", "?"))
    if method not in METHODS:
        raise ValueError(
            f"quantization method {method!r} is not supported (FP8, MXFP4, GPTQ, AWQ and "
            "compressed-tensors checkpoints are, and unquantized ones); serve the model's "
            "bf16/fp16 release instead"
        )
    if method == "compressed-tensors":
        return _compressed_tensors(quantization)
    if method == "gptq":
        return _gptq(quantization)
    if method == "awq":
        return _awq(quantization)
    if method == "mxfp4":  # 32-value blocks with one power-of-two scale: nothing to set
        return WeightQuantization(method, None)
    fmt = quantization.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise ValueError(f"FP8 format {fmt!r} is not supported (only e4m3)")
    block = quantization.get("weight_block_size")
    if block is not None and (len(block) != 2 or min(block) < 1):
        raise ValueError(f"weight_block_size must be two positive sizes, got {block!r}")
    if block is None:
        # A scale per matrix: AutoFP8's and vLLM's own exports name it weight_scale
        # (the loader goes by the names in the files, engine/fp8_checkpoint.py).
        return WeightQuantization(method, None, PER_TENSOR_SCALE_SUFFIXES)
    return WeightQuantization(method, (int(block[0]), int(block[1])))


def _compressed_tensors(quantization: dict[str, Any]) -> WeightQuantization:
    """compressed-tensors' FP8 weights (any activation scheme: activations stay in the
    model's dtype; groups without weights, such as a KV-cache scheme's, change nothing
    here) or its integer ones (W4A16, W8A16, W8A8-int8: packed or int8 codes, a scale
    per channel or group, zero points if asymmetric); sparse and rotated schemes are
    refused by name."""
    sparsity = (quantization.get("sparsity_config") or {}).get("format")
    if sparsity not in (None, "dense"):
        raise ValueError(
            f"compressed-tensors sparsity format {sparsity!r} is not supported; serve the "
            "model's dense release instead"
        )
    if quantization.get("transform_config"):
        raise ValueError(
            "compressed-tensors transforms (rotations such as QuIP or SpinQuant) are not "
            "supported; serve the model's untransformed release instead"
        )
    fp8_schemes: set[tuple[int, ...] | None] = set()
    int_schemes: set[tuple[int, int | None]] = set()
    for name, group in (quantization.get("config_groups") or {}).items():
        if not isinstance(group, dict):
            raise ValueError(
                f"compressed-tensors group {name!r} is a preset ({group!r}), not a scheme "
                "with its weights spelled out; only those are read"
            )
        weights = group.get("weights")
        if not weights:
            continue
        kind = f"{weights.get('type', '?')}{weights.get('num_bits', '?')}"
        strategy = weights.get("strategy")
        if kind in _INT_KINDS and strategy in _INT_STRATEGIES:
            _check_int_format(name, group.get("format") or quantization.get("format"))
            size = weights.get("group_size") if strategy == "group" else None
            int_schemes.add((_INT_KINDS[kind], int(size) if size else None))
            continue
        if kind != "float8" or strategy not in _FP8_STRATEGIES:
            raise ValueError(
                f"compressed-tensors scheme {name!r} ({kind} weights, strategy {strategy!r}) "
                "is not supported: its FP8 weights are (per tensor, channel or block) and "
                "its 2-, 4- and 8-bit integer ones (per tensor, channel or group); serve "
                "the model's bf16/fp16 release instead"
            )
        if weights.get("symmetric") is False:
            raise ValueError(
                f"compressed-tensors scheme {name!r} has asymmetric FP8 weights (zero "
                "points), which are not supported"
            )
        block = weights.get("block_structure") if strategy == "block" else None
        if strategy == "block" and (not block or len(block) != 2 or min(block) < 1):
            raise ValueError(f"FP8 block strategy needs a block_structure, got {block!r}")
        fp8_schemes.add(tuple(int(size) for size in block) if block else None)
    if fp8_schemes and int_schemes:
        raise ValueError(
            "compressed-tensors checkpoints mixing FP8 and integer weights are not supported"
        )
    if int_schemes:
        if len({bits for bits, _ in int_schemes}) > 1:
            raise ValueError(
                "compressed-tensors checkpoints need one integer width for all layers, got "
                f"{sorted({bits for bits, _ in int_schemes})} bits"
            )
        bits = next(iter(int_schemes))[0]
        sizes = tuple(sorted({size for _, size in int_schemes if size}))
        return WeightQuantization("int", None, "", IntWeights(bits, sizes))
    if len(fp8_schemes) > 1:
        raise ValueError(
            "compressed-tensors checkpoints need one FP8 weight scheme for all layers, "
            f"got {len(fp8_schemes)}"
        )
    # No weight scheme at all (KV-cache scales only): plain weights, the KV-cache scales
    # passed on to the layers (engine/kv_cache_scales.py).
    block_size = next(iter(fp8_schemes), None)
    return WeightQuantization("fp8", block_size, COMPRESSED_TENSORS_SCALE_SUFFIX)  # type: ignore[arg-type]


def _check_int_format(scheme: str, fmt: object) -> None:
    """compressed-tensors' integer codes are read packed into int32 words or as int8
    tensors; its Marlin-repacked layout is not."""
    if fmt not in _INT_FORMATS:
        raise ValueError(
            f"compressed-tensors scheme {scheme!r} stores its integer weights as {fmt!r}, "
            f"which is not supported (only {', '.join(_INT_FORMATS)})"
        )


def _gptq(quantization: dict[str, Any]) -> WeightQuantization:
    """AutoGPTQ's and GPTQModel's layout: codes packed down the input dimension into
    int32 words, zero points across the output one, one scale per group (`g_idx` orders
    them under act-order); original-format zero points are stored less one. Their
    Marlin-repacked layouts and other word widths are refused by name."""
    bits = int(quantization.get("bits", 4))
    if bits not in (2, 4, 8):
        raise ValueError(f"GPTQ with {bits}-bit weights is not supported (2, 4 and 8 are)")
    fmt = quantization.get("checkpoint_format") or quantization.get("format") or "gptq"
    if quantization.get("is_marlin_format"):
        fmt = "marlin"
    if fmt not in ("gptq", "gptq_v2"):
        raise ValueError(
            f"GPTQ checkpoint format {fmt!r} is not supported (gptq and gptq_v2 are); "
            "serve the model's GPTQ or bf16 release instead"
        )
    pack_dtype = str(quantization.get("pack_dtype", "int32")).removeprefix("torch.")
    if pack_dtype != "int32":
        raise ValueError(f"GPTQ codes packed in {pack_dtype} words are not supported (int32 are)")
    if quantization.get("dynamic"):
        raise ValueError("GPTQ checkpoints with per-module overrides (`dynamic`) are not supported")
    return WeightQuantization(
        "gptq", None, "", IntWeights(bits, _group_sizes(quantization), int(fmt == "gptq"))
    )


def _awq(quantization: dict[str, Any]) -> WeightQuantization:
    """AutoAWQ's GEMM layout: 4-bit codes and zero points packed across the output
    dimension (in AWQ's interleaved order), one scale and zero per group of inputs."""
    # The layout on disk: `version` in AutoAWQ's configs, `format` in GPTQModel's (whose
    # `backend` names a kernel, except the legacy "llm-awq", which is a layout).
    fmt = str(quantization.get("format") or quantization.get("version") or "gemm").lower()
    if str(quantization.get("backend", "")).lower() == "llm-awq":
        fmt = "llm-awq"
    if fmt != "gemm":
        raise ValueError(
            f"AWQ format {fmt!r} is not supported (gemm is); serve the model's GEMM-format "
            "AWQ or bf16 release instead"
        )
    bits = int(quantization.get("bits", quantization.get("w_bit", 4)))
    if bits != 4:
        raise ValueError(f"AWQ with {bits}-bit weights is not supported (4-bit is)")
    if quantization.get("zero_point") is False:
        raise ValueError("AWQ without zero points is not supported")
    size = quantization.get("group_size", quantization.get("q_group_size"))
    return WeightQuantization("awq", None, "", IntWeights(bits, _group_sizes({"group_size": size})))


def _group_sizes(quantization: dict[str, Any]) -> tuple[int, ...]:
    """The configured input columns per scale; none for -1 (one group a row) or unset."""
    size = quantization.get("group_size")
    if size is None or int(size) == -1:
        return ()
    if int(size) < 1:
        raise ValueError(f"group_size must be positive or -1, got {size!r}")
    return (int(size),)
