"""Which quantized format a checkpoint's weights are stored in, from its config.

FP8 (`quant_method: "fp8"`, engine/fp8_checkpoint.py) and MXFP4 (`"mxfp4"`,
gpt-oss's experts: engine/mxfp4_checkpoint.py) are dequantized as they load;
every other method (AWQ, GPTQ, bitsandbytes, compressed-tensors) is refused
by name at start-up, not loaded as garbage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

METHODS = ("fp8", "mxfp4")


@dataclass(frozen=True)
class WeightQuantization:
    method: str
    # Each scale's tile of the matrix (rows, columns); None: one scale per matrix.
    block_size: tuple[int, int] | None


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
    if method == "mxfp4":  # 32-value blocks with one power-of-two scale: nothing to set
        return WeightQuantization(method, None)
    fmt = quantization.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise ValueError(f"FP8 format {fmt!r} is not supported (only e4m3)")
    block = quantization.get("weight_block_size")
    if block is not None and (len(block) != 2 or min(block) < 1):
        raise ValueError(f"weight_block_size must be two positive sizes, got {block!r}")
    return WeightQuantization(method, (int(block[0]), int(block[1])) if block else None)
