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
_FP8_STRATEGIES = ("tensor", "channel", "block")


@dataclass(frozen=True)
class WeightQuantization:
    method: str  # "fp8" (compressed-tensors' FP8 too) or "mxfp4"
    # Each scale's tile of the matrix (rows, columns); None: one scale per matrix, or
    # one per output channel (a [out, 1] scale).
    block_size: tuple[int, int] | None
    # What a weight's scale is named after it: `<weight name><suffix>`.
    scale_suffix: str = FP8_SCALE_SUFFIX


def weight_quantization(hf: dict[str, Any]) -> WeightQuantization | None:
    """A quantized checkpoint's settings, None for a plain one; methods the engine
    cannot dequantize are refused."""
    quantization = hf.get("quantization_config")
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
    return WeightQuantization(method, (int(block[0]), int(block[1])) if block else None)


def _compressed_tensors(quantization: dict[str, Any]) -> WeightQuantization:
    """compressed-tensors' FP8 weights (any activation scheme: activations stay in the
    model's dtype); its integer and sparse schemes are refused by name."""
    groups = quantization.get("config_groups") or {}
    schemes = set()
    for name, group in groups.items():
        weights = (group or {}).get("weights") or {}
        kind = f"{weights.get('type', '?')}{weights.get('num_bits', '?')}"
        strategy = weights.get("strategy")
        if kind != "float8" or strategy not in _FP8_STRATEGIES:
            raise ValueError(
                f"compressed-tensors scheme {name!r} ({kind} weights, strategy {strategy!r}) "
                "is not supported: only its FP8 weights are (per tensor, channel or block); "
                "serve the model's bf16/fp16 or FP8 release instead"
            )
        block = weights.get("block_structure") if strategy == "block" else None
        if strategy == "block" and (not block or len(block) != 2 or min(block) < 1):
            raise ValueError(f"FP8 block strategy needs a block_structure, got {block!r}")
        schemes.add(tuple(int(size) for size in block) if block else None)
    if len(schemes) != 1:
        raise ValueError(
            "compressed-tensors checkpoints need one FP8 weight scheme for all layers, "
            f"got {len(schemes)}"
        )
    (block_size,) = schemes
    return WeightQuantization("fp8", block_size, COMPRESSED_TENSORS_SCALE_SUFFIX)  # type: ignore[arg-type]
