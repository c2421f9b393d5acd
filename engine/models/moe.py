"""A mixture-of-experts MLP (Mixtral, Qwen2-MoE, Qwen3-MoE): each token through its
top-k experts.

The router scores every expert, keeps each token's `experts_per_token` best
(their softmax probabilities, renormalised over the chosen ones where the
model does), and the token's output is their MLPs' outputs so weighted, plus
(Qwen2-MoE) a shared expert every token goes through, scaled by a sigmoid
gate. The
experts' weights are stacked ([experts, 2 * inter, hidden] for gate/up,
[experts, hidden, inter] for down) and run by the backend's `experts` op:
torch ops grouped by expert (kernels/experts.py, bit for bit transformers,
one host sync per layer), or grouped GEMMs in Triton
(kernels/triton_experts.py, no host sync, so decodes can replay CUDA graphs).
An FP8 checkpoint's experts stay FP8 where the backend's experts op reads it
(`keep_fp8`, engine/fp8_linears.py), their scales stacked beside them; a
GPTQ or AWQ checkpoint's stay packed integers where it reads those (`keep_int`,
engine/int_linears.py), their scales, zeros and column groups stacked beside them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ModelConfig
from engine.fp8_checkpoint import SCALE_SUFFIX as FP8_SCALE_SUFFIX
from engine.models.linear import Linear
from engine.models.mlp import MLP, act_and_mul_for
from kernels.expert_stack import ExpertStack
from kernels.fp8 import Fp8Block, Fp8Experts, empty_fp8
from kernels.fused_ops import FusedOps
from kernels.packed_int import IntExperts, empty_packed

# What sits beside a kept expert matrix: FP8 scales, under the name the model holds
# them by; a packed matrix's scales and zeros (engine/int_checkpoint.py's names).
INT_SIDES = ("_scale", "_zero")
# A router's or one expert's weight, as the model names checkpoint tensors (an expert's
# `side` tensors too).
EXPERT_KEY = re.compile(
    r"^layers\.(?P<layer>\d+)\.(?:mlp|block_sparse_moe)\."
    r"(?:gate\.weight|experts\.(?P<expert>\d+)\.(?P<part>\w+)\.weight"
    rf"(?P<side>{re.escape(FP8_SCALE_SUFFIX)}|{'|'.join(INT_SIDES)})?)$"
)
# Checkpoint names of an expert's three matrices: Qwen3-MoE's, then Mixtral's.
EXPERT_PARTS = {
    "gate_proj": "gate",
    "up_proj": "up",
    "down_proj": "down",
    "w1": "gate",
    "w3": "up",
    "w2": "down",
}


class SparseMoE(nn.Module):
    def __init__(self, config: ModelConfig, ops: FusedOps) -> None:
        super().__init__()
        experts, hidden = config.num_experts, config.hidden_size
        self.inter = config.moe_intermediate_size
        self.top_k = config.experts_per_token
        self.normalize = config.normalize_routing
        # Mixtral weighs each expert's output in fp32 and rounds once; Qwen3-MoE rounds
        # the weights to the model's dtype first (as transformers does for each).
        self.fp32_routing = config.fp32_routing_weights
        self.act_and_mul = act_and_mul_for(config, ops)
        self.experts = ops.experts
        # The router's matmul is plain F.linear, as transformers', so that near-tied
        # expert scores break the same way.
        self.gate = nn.Parameter(torch.empty(experts, hidden))
        self.gate_up = nn.Parameter(torch.empty(experts, 2 * self.inter, hidden))
        self.down = nn.Parameter(torch.empty(experts, hidden, self.inter))
        # Set when the experts stay FP8 (keep_fp8): each stack's tiles.
        self.fp8_blocks: tuple[Fp8Block, Fp8Block] | None = None
        # Set when they stay packed integers (keep_int): the codes' width, and each
        # stack's run of columns per group (0: act-order's groups, read per column).
        self.int_bits: int | None = None
        self.int_group_sizes = (0, 0)
        self.shared_expert: MLP | None = None
        if config.shared_expert_intermediate_size:
            self.shared_expert = MLP(config, ops, config.shared_expert_intermediate_size)
            self.shared_expert_gate = Linear(hidden, 1, False, ops.linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(F.linear(x, self.gate), dim=-1, dtype=torch.float32)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        if self.normalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        if not self.fp32_routing:
            weights = weights.to(x.dtype)
        out = self.experts(x, *self._stacks(), weights, chosen, self.act_and_mul)
        if self.shared_expert is not None:
            shared = torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
            out = out + shared
        return out

    def _stacks(self) -> tuple[ExpertStack, ExpertStack]:
        if self.int_bits is not None:
            return (
                IntExperts(
                    self.gate_up,
                    self.gate_up_scale,
                    self.gate_up_zero,
                    self.gate_up_groups,
                    self.int_bits,
                    self.int_group_sizes[0],
                ),
                IntExperts(
                    self.down,
                    self.down_scale,
                    self.down_zero,
                    self.down_groups,
                    self.int_bits,
                    self.int_group_sizes[1],
                ),
            )
        if self.fp8_blocks is None:
            return self.gate_up, self.down
        return (
            Fp8Experts(self.gate_up, self.gate_up_scale_inv, self.fp8_blocks[0]),
            Fp8Experts(self.down, self.down_scale_inv, self.fp8_blocks[1]),
        )

    def keep_fp8(self, block_size: tuple[int, int] | None) -> None:
        """Hold the experts as FP8 (e4m3 bytes and scales, per `block_size` tile, or per
        row where None, allocated empty): on the meta device for a checkpoint's FP8
        experts to load into, or after loading for --quantization fp8 to fill."""
        stacks = {"gate_up": self.gate_up, "down": self.down}
        blocks = []
        for name, stack in stacks.items():
            experts, rows, cols = stack.shape
            block = Fp8Block(*block_size) if block_size else Fp8Block(1, cols)
            values, scales = empty_fp8((experts, rows, cols), block, stack.device)
            setattr(self, name, nn.Parameter(values, requires_grad=False))
            setattr(self, f"{name}_scale_inv", nn.Parameter(scales, requires_grad=False))
            blocks.append(block)
        self.fp8_blocks = (blocks[0], blocks[1])

    def keep_int(
        self, bits: int, group_counts: tuple[int, int], group_sizes: tuple[int, int]
    ) -> None:
        """Hold the experts as packed integer codes (kernels/packed_int.py's IntExperts,
        allocated empty on the meta device for a checkpoint's codes to load into):
        `group_counts` and `group_sizes` per stack (gate/up, down); each expert's
        column groups are set once memory is allocated (engine/int_linears.py)."""
        stacks = {"gate_up": self.gate_up, "down": self.down}
        for (name, stack), count in zip(stacks.items(), group_counts, strict=True):
            codes, scales, zeros, groups = empty_packed(
                tuple(stack.shape), bits, count, stack.device
            )
            for suffix, tensor in (("", codes), ("_scale", scales), ("_zero", zeros)):
                setattr(self, name + suffix, nn.Parameter(tensor, requires_grad=False))
            self.register_buffer(f"{name}_groups", groups)
        self.int_bits, self.int_group_sizes = bits, group_sizes

    def load_expert(self, expert: int, part: str, tensor: torch.Tensor, side: str = "") -> str:
        """Copy one expert matrix (or, `side`, what sits beside a kept one: its FP8
        scales, or its packed codes' scales or zeros) in; returns the key that marks it
        loaded."""
        stack, rows = ("gate_up", self.inter) if part != "down" else ("down", 0)
        if side == FP8_SCALE_SUFFIX:
            if self.fp8_blocks is None:
                raise ValueError(f"FP8 scales for expert {expert}'s {part} of unkept experts")
            rows //= self.fp8_blocks[0].rows
        elif side and self.int_bits is None:
            raise ValueError(f"packed {side[1:]}s for expert {expert}'s {part} of unkept experts")
        target = getattr(self, stack + side)
        with torch.no_grad():
            if part == "down":
                target[expert].copy_(tensor)
            else:
                start = 0 if part == "gate" else rows
                target[expert, start : start + rows].copy_(tensor)
        return f"{expert}:{part}{side}"

    def expected_parts(self) -> set[str]:
        parts = {f"{e}:{p}" for e in range(self.gate.shape[0]) for p in ("gate", "up", "down")}
        sides = [FP8_SCALE_SUFFIX] if self.fp8_blocks is not None else []
        if self.int_bits is not None:
            sides = list(INT_SIDES)
        return parts | {part + side for part in parts for side in sides}


def checkpoint_expert_layers(
    model: nn.Module, hf_names: Iterable[str]
) -> Iterator[tuple[int, SparseMoE, dict[tuple[int, str], str]]]:
    """The mixture-of-experts layers all of whose expert matrices (three an expert) are
    among `hf_names` (checkpoint weight names, a quantized checkpoint's), each as its
    index, its SparseMoE and those names by (expert, part): the layers whose experts may
    stay quantized. Layers the names do not reach are never looked at (an encoder's
    have no `mlp`)."""
    by_layer: dict[int, dict[tuple[int, str], str]] = {}
    for hf_name in hf_names:
        name = model.checkpoint_name(hf_name)  # type: ignore[operator]
        key = EXPERT_KEY.match(name) if name is not None else None
        if key is None or key["expert"] is None or key["part"] not in EXPERT_PARTS:
            continue
        part = (int(key["expert"]), EXPERT_PARTS[key["part"]])
        by_layer.setdefault(int(key["layer"]), {})[part] = hf_name
    layers = model.layers  # type: ignore[union-attr]
    for index, found in sorted(by_layer.items()):
        if index >= len(layers):  # type: ignore[arg-type]
            continue  # the loader names it an unexpected weight
        moe = getattr(layers[index], "mlp", None)  # type: ignore[index]
        if isinstance(moe, SparseMoE) and len(found) == 3 * moe.gate.shape[0]:
            yield index, moe, found
