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
release stores them in MXFP4, dequantized before they get here
(engine/mxfp4_checkpoint.py).
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
from kernels.fused_ops import FusedOps

_MOE_KEY = re.compile(
    r"^layers\.(?P<layer>\d+)\.mlp\."
    r"(?P<part>router\.(?:weight|bias)|experts\.(?:gate_up_proj|down_proj)(?:_bias)?)$"
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
        self.gate_up = nn.Parameter(torch.empty(experts, 2 * inter, hidden))
        self.gate_up_bias = nn.Parameter(torch.empty(experts, 2 * inter))
        self.down = nn.Parameter(torch.empty(experts, hidden, inter))
        self.down_bias = nn.Parameter(torch.empty(experts, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = F.linear(x, self.router_weight, self.router_bias)
        top, chosen = torch.topk(logits, self.top_k, dim=-1)
        # In the logits' dtype, as transformers weighs the experts.
        weights = torch.softmax(top, dim=-1)
        return self.experts(
            x,
            self.gate_up,
            self.down,
            weights,
            chosen,
            self.act_and_mul,
            self.gate_up_bias,
            self.down_bias,
        )

    def load(self, part: str, tensor: torch.Tensor) -> str:
        """Copy one checkpoint tensor in (`part`: its name under the layer's `mlp.`);
        returns the parameter it filled."""
        with torch.no_grad():
            if part.startswith("router."):
                target = "router_" + part.removeprefix("router.")
                getattr(self, target).copy_(tensor)
            elif part == "experts.gate_up_proj":  # [E, H, 2I], gate and up interleaved
                target = "gate_up"
                self.gate_up.copy_(_gate_then_up(tensor).transpose(1, 2))
            elif part == "experts.gate_up_proj_bias":
                target = "gate_up_bias"
                self.gate_up_bias.copy_(_gate_then_up(tensor))
            elif part == "experts.down_proj":  # [E, I, H]
                target = "down"
                self.down.copy_(tensor.transpose(1, 2))
            else:
                target = "down_bias"
                self.down_bias.copy_(tensor)
        return target


def _gate_then_up(interleaved: torch.Tensor) -> torch.Tensor:
    """[..., 2I] with gate and up alternating -> [..., 2I] with all gates first."""
    return torch.cat((interleaved[..., ::2], interleaved[..., 1::2]), dim=-1)


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
