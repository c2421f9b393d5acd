"""Which of a model's linear layers and expert stacks keep an FP8 checkpoint's weights.

Where the backend multiplies FP8 itself (`FusedOps.fp8_linear`: Triton), an
FP8 checkpoint's projections stay FP8 in memory, a byte a weight (half of
bf16's), instead of being dequantized as they load. It is decided on the
meta-device model, before its tensors are allocated, from which of the
checkpoint's tensors are FP8 (the safetensors headers say so without reading
the tensors). A projection the engine fuses (q/k/v, gate/up) stays FP8 when
every part is FP8 and starts on a tile boundary, so that each part's scales
are whole rows of the fused scales; a mixture of experts' stacks stay FP8
where the backend's experts op reads FP8 (`FusedOps.experts_fp8`) and every
expert's matrices are FP8; anything else (a part left in bf16, tiles that
straddle two parts, the LM head) is dequantized as it loads, as on the torch
path.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from safetensors import safe_open
from torch import nn

from engine.models.linear import FUSED_PARTS, NOT_CALLED, Linear
from engine.models.moe import checkpoint_expert_layers
from kernels.fp8 import Fp8Block
from kernels.fused_ops import Fp8Linear

FP8_DTYPE = "F8_E4M3"


def checkpoint_dtypes(files: Iterable[Path]) -> dict[str, str]:
    """Every checkpoint tensor's safetensors dtype ("F8_E4M3", "BF16", ...), from the
    files' headers, without reading the tensors."""
    dtypes: dict[str, str] = {}
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                dtypes[name] = handle.get_slice(name).get_dtype()
    return dtypes


def keep_fp8_linears(
    model: nn.Module,
    fp8_names: set[str],
    block_size: tuple[int, int] | None,
    fp8_linear: Fp8Linear,
) -> frozenset[str]:
    """Turn the model's linear layers whose checkpoint weights are all FP8 (and whose fused
    parts start on tile boundaries) into FP8 ones; returns those weights' checkpoint
    names, which the loader then passes through undequantized with their scales.
    `block_size`: the checkpoint's tiles; None (a scale per matrix or per output
    channel): a scale per row, each part's own spread over its rows."""
    ours: dict[str, str] = {}
    for hf_name in fp8_names:
        name = model.checkpoint_name(hf_name)  # type: ignore[operator]
        if name is not None:
            ours[name] = hf_name
    kept: set[str] = set()
    for qualified, module in model.named_modules():
        if not isinstance(module, Linear) or qualified in NOT_CALLED:
            continue
        block = Fp8Block(*block_size) if block_size else Fp8Block(1, module.in_features)
        if f"{qualified}.weight" in ours:  # stored as the model holds it
            module.keep_fp8(block, fp8_linear)
            kept.add(ours[f"{qualified}.weight"])
            continue
        prefix, _, fused = qualified.rpartition(".")
        parts = FUSED_PARTS.get(fused)
        if parts is None:
            continue
        names = [f"{prefix}.{part}.weight" for part in parts]
        if not all(name in ours for name in names):
            continue
        if any(start % block.rows for start in _part_starts(model, prefix, fused, module)):
            continue
        module.keep_fp8(block, fp8_linear)
        kept.update(ours[name] for name in names)
    return frozenset(kept)


def keep_fp8_experts(
    model: nn.Module, fp8_names: set[str], block_size: tuple[int, int] | None
) -> frozenset[str]:
    """Turn the mixture-of-experts layers whose every expert matrix is FP8 in the
    checkpoint (and whose up rows start on a tile boundary) into FP8 stacks; returns
    those matrices' checkpoint names, as keep_fp8_linears does."""
    kept: set[str] = set()
    for _, moe, found in checkpoint_expert_layers(model, fp8_names):
        if block_size is not None and moe.inter % block_size[0]:
            continue
        moe.keep_fp8(block_size)
        kept.update(found.values())
    return frozenset(kept)


def _part_starts(model: nn.Module, prefix: str, fused: str, linear: Linear) -> list[int]:
    """Where each part's rows start in the fused weight, and where the last one ends."""
    if fused == "qkv_proj":
        attention = model.get_submodule(prefix)
        q, kv = attention.q_size, attention.kv_size
        return [0, q, q + kv, q + 2 * kv]
    half = linear.out_features // 2
    return [0, half, 2 * half]
