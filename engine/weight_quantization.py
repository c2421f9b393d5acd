"""Which quantized format a checkpoint's weights are stored in, from its config.

FP8 (`quant_method: "fp8"`, engine/fp8_checkpoint.py: DeepSeek's and Qwen's
`-FP8` releases, scales named `weight_scale_inv`), compressed-tensors' FP8
schemes (llm-compressor's `-FP8`/`-FP8-dynamic`/`-FP8-block` releases: the
same e4m3 weights with scales named `weight_scale`, one per tensor, output
channel or tile; read as FP8 here) and MXFP4 (`"mxfp4"`, gpt-oss's experts:
engine/mxfp4_checkpoint.py); every other method (AWQ, GPTQ, bitsandbytes,
compressed-tensors' integer schemes) is refused by name at start-up, not
loaded as garbage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

METHODS = ("fp8", "mxfp4", "compressed-tensors")
FP8_SCALE_SUFFIX = "_scale_inv"
COMPRESSED_TENSORS_SCALE_SUFFIX = "_scale"
# Either name, whichever the checkpoint's files use (`"_scale_inv|_scale"`).
PER_TENSOR_SCALE_SUFFIXES = f"{FP8_SCALE_SUFFIX}|{COMPRESSED_TENSORS_SCALE_SUFFIX}"
_FP8_STRATEGIES = ("tensor", "channel", "block")


@dataclass(frozen=True)
class WeightQuantization:
    method: str  # "fp8" (compressed-tensors' FP8 too) or "mxfp4"
    # Each scale's tile of the matrix (rows, columns); None: one scale per matrix, or
    # one per output channel (a [out, 1] scale).
    block_size: tuple[int, int] | None
    # What a weight's scale is named after it: `<weight name><suffix>`; two names joined
    # by "|" when the config does not say which (the files do).
    scale_suffix: str = FP8_SCALE_SUFFIX


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
            f"quantization method {method!r} is not supported (FP8 and MXFP4 checkpoints "
            "are, and unquantized ones); serve the model's bf16/fp16 release instead"
        )
    if method == "compressed-tensors":
        return _compressed_tensors(quantization)
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
    here); its integer, asymmetric, sparse and rotated schemes are refused by name."""
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
    schemes = set()
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
        if kind != "float8" or strategy not in _FP8_STRATEGIES:
            raise ValueError(
                f"compressed-tensors scheme {name!r} ({kind} weights, strategy {strategy!r}) "
                "is not supported: only its FP8 weights are (per tensor, channel or block); "
                "serve the model's bf16/fp16 or FP8 release instead"
            )
        if weights.get("symmetric") is False:
            raise ValueError(
                f"compressed-tensors scheme {name!r} has asymmetric FP8 weights (zero "
                "points), which are not supported"
            )
        block = weights.get("block_structure") if strategy == "block" else None
        if strategy == "block" and (not block or len(block) != 2 or min(block) < 1):
            raise ValueError(f"FP8 block strategy needs a block_structure, got {block!r}")
        schemes.add(tuple(int(size) for size in block) if block else None)
    if len(schemes) > 1:
        raise ValueError(
            "compressed-tensors checkpoints need one FP8 weight scheme for all layers, "
            f"got {len(schemes)}"
        )
    # No weight scheme at all (KV-cache scales only): plain weights, the KV-cache scales
    # passed on to the layers (engine/kv_cache_scales.py).
    block_size = next(iter(schemes), None)
    return WeightQuantization("fp8", block_size, COMPRESSED_TENSORS_SCALE_SUFFIX)  # type: ignore[arg-type]
