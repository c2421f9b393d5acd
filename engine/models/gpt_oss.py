"""OpenAI's gpt-oss (20B, 120B): Llama's layer with attention sinks and its own experts.

Differences from Llama, each where it lives: biases on all four attention
projections and a learned sink logit per head (the attention backend's
`sinks`); every other layer slides over a 128-token window (config); YaRN
rotation (config); norm weights multiplied in fp32 (config). The MLP is a
mixture of experts unlike Mixtral's: the router has a bias and takes the
softmax of its top-k logits only; each expert's matmuls have biases, and its
activation is a clamped SwiGLU, (up + 1) * gate * sigmoid(1.702 * gate).

Checkpoints store each layer's experts stacked and transposed ([E, in, out]),
gate and up interleaved column by column; they are split into the fused
[E, 2I, H] gate-then-up layout the experts op reads once, at load. OpenAI's
release stores them in MXFP4: kept so ([E, out, in / 2] bytes and their
scales, rows reordered the same way) where the backend's experts op reads
MXFP4, else dequantized before they get here (engine/mxfp4_checkpoint.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ModelConfig
from engine.models.llama import DecoderLayer, LlamaForCausalLM
from engine.mxfp4_checkpoint import keeps_mxfp4
from kernels.expert_stack import ExpertStack
from kernels.fused_ops import FusedOps
from kernels.mxfp4 import VALUES_PER_SCALE, Mxfp4Weight

_MOE_KEY = re.compile(
    r"^layers\.(?P<layer>\d+)\.mlp\."
    r"(?P<part>router\.(?:weight|bias)"
    r"|experts\.(?:gate_up_proj|down_proj)(?:_bias|_blocks|_scales)?)$"
)


class GptOssMoE(nn.Module):
    def __init__(self, config: ModelConfig, ops: FusedOps) -> None:
        super().__init__()
        experts, hidden = config.num_experts, config.hidden_size
        inter = config.moe_intermediate_size
        self.top_k = config.experts_per_token
        self.experts = ops.experts
        self.act_and_mul = partial(
            ops.clamped_swiglu_and_mul, alpha=config.swiglu_alpha, limit=config.swiglu_limit
        )
        # The router's matmul is plain F.linear, as transformers', so that near-tied
        # expert scores break the same way.
        self.router_weight = nn.Parameter(torch.empty(experts, hidden))
        self.router_bias = nn.Parameter(torch.empty(experts))
        self.gate_up_bias = nn.Parameter(torch.empty(experts, 2 * inter))
        self.down_bias = nn.Parameter(torch.empty(experts, hidden))
        # An MXFP4 checkpoint's experts stay MXFP4 where the experts op reads it.
        self.mxfp4 = keeps_mxfp4(config, ops)
        if self.mxfp4:
            self.gate_up_blocks, self.gate_up_scales = _packed(experts, 2 * inter, hidden)
            self.down_blocks, self.down_scales = _packed(experts, hidden, inter)
        else:
            self.gate_up = nn.Parameter(torch.empty(experts, 2 * inter, hidden))
            self.down = nn.Parameter(torch.empty(experts, hidden, inter))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = F.linear(x, self.router_weight, self.router_bias)
        top, chosen = torch.topk(logits, self.top_k, dim=-1)
        # In the logits' dtype, as transformers weighs the experts.
        weights = torch.softmax(top, dim=-1)
        return self.experts(
            x,
            *self._stacks(),
            weights,
            chosen,
            self.act_and_mul,
            self.gate_up_bias,
            self.down_bias,
        )

    def _stacks(self) -> tuple[ExpertStack, ExpertStack]:
        if self.mxfp4:
            return (
                Mxfp4Weight(self.gate_up_blocks, self.gate_up_scales),
                Mxfp4Weight(self.down_blocks, self.down_scales),
            )
        return self.gate_up, self.down

    def load(self, part: str, tensor: torch.Tensor) -> str:
        """Copy one checkpoint tensor in (`part`: its name under the layer's `mlp.`);
        returns the parameter it filled."""
        if part.startswith("router."):
            target = "router_" + part.removeprefix("router.")
        elif part.endswith("_bias"):  # [E, 2I] gate and up interleaved, [E, H]
            target = part.removeprefix("experts.").removesuffix("_proj_bias") + "_bias"
            if target == "gate_up_bias":
                tensor = _gate_then_up(tensor, dim=-1)
        elif part.endswith(("_blocks", "_scales")):  # [E, out, G, 16] and [E, out, G]
            if not self.mxfp4:
                raise ValueError(f"MXFP4 weight {part!r} in a checkpoint not declared MXFP4")
            matrix, kind = part.removeprefix("experts.").rsplit("_proj_", 1)
            target = f"{matrix}_{kind}"
            if matrix == "gate_up":  # output rows gate and up interleaved
                tensor = _gate_then_up(tensor, dim=1)
            if kind == "blocks":
                tensor = tensor.flatten(-2)
        else:  # [E, in, out] (gate_up's columns interleaved)
            if self.mxfp4:
                raise ValueError(f"{part!r} is not MXFP4 in a checkpoint declared MXFP4")
            target = part.removeprefix("experts.").removesuffix("_proj")
            if target == "gate_up":
                tensor = _gate_then_up(tensor, dim=-1)
            tensor = tensor.transpose(1, 2)
        with torch.no_grad():
            getattr(self, target).copy_(tensor)
        return target


def _packed(experts: int, rows: int, cols: int) -> tuple[nn.Parameter, nn.Parameter]:
    """Blocks and scales of a stack of [experts, rows, cols] MXFP4 matrices."""
    blocks = torch.empty(experts, rows, cols // 2, dtype=torch.uint8)
    scales = torch.empty(experts, rows, cols // VALUES_PER_SCALE, dtype=torch.uint8)
    return nn.Parameter(blocks, requires_grad=False), nn.Parameter(scales, requires_grad=False)


def _gate_then_up(interleaved: torch.Tensor, dim: int) -> torch.Tensor:
    """Gate and up alternating along `dim` -> all gates first, then all ups."""
    size = interleaved.shape[dim]
    order = torch.cat((torch.arange(0, size, 2), torch.arange(1, size, 2)))
    return interleaved.index_select(dim, order.to(interleaved.device))


class GptOssDecoderLayer(DecoderLayer):
    sparse_mlp = GptOssMoE


class GptOssForCausalLM(LlamaForCausalLM):
    decoder_layer = GptOssDecoderLayer

    def load_own_weight(self, name: str, tensor: torch.Tensor) -> str | None:
        key = _MOE_KEY.match(name)
        if key is None:
            return None
        index = int(key["layer"])
        if index >= len(self.layers):
            raise ValueError(f"unexpected weight {name!r}: the model has {len(self.layers)} layers")
        mlp = self.layers[index].mlp
        return f"layers.{index}.mlp.{mlp.load(key['part'], tensor)}"

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        super().load_weights(weights)
        # Kept in fp32: the kernels add them to fp32 softmax sums.
        with torch.no_grad():
            for layer in self.layers:
                sinks = layer.self_attn.sinks
                sinks.data = sinks.detach().float()
