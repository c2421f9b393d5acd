"""A mixture-of-experts MLP (Mixtral, Qwen3-MoE): each token through its top-k experts.

The router scores every expert, keeps each token's `experts_per_token` best
(their softmax probabilities, renormalised over the chosen ones where the
model does), and the token's output is their MLPs' outputs so weighted. The
experts' weights are stacked ([experts, 2 * inter, hidden] for gate/up,
[experts, hidden, inter] for down) and run by the backend's `experts` op:
torch ops grouped by expert (kernels/experts.py, bit for bit transformers,
one host sync per layer), or grouped GEMMs in Triton
(kernels/triton_experts.py, no host sync, so decodes can replay CUDA graphs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ModelConfig
from kernels.fused_ops import FusedOps

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
        self.act_and_mul = (
            ops.gelu_tanh_and_mul if config.hidden_activation == "gelu_tanh" else ops.silu_and_mul
        )
        self.experts = ops.experts
        # The router's matmul is plain F.linear, as transformers', so that near-tied
        # expert scores break the same way.
        self.gate = nn.Parameter(torch.empty(experts, hidden))
        self.gate_up = nn.Parameter(torch.empty(experts, 2 * self.inter, hidden))
        self.down = nn.Parameter(torch.empty(experts, hidden, self.inter))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(F.linear(x, self.gate), dim=-1, dtype=torch.float32)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        if self.normalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        if not self.fp32_routing:
            weights = weights.to(x.dtype)
        return self.experts(x, self.gate_up, self.down, weights, chosen, self.act_and_mul)

    def load_expert(self, expert: int, part: str, tensor: torch.Tensor) -> str:
        """Copy one expert matrix in; returns the key that marks it loaded."""
        with torch.no_grad():
            if part == "gate":
                self.gate_up[expert, : self.inter].copy_(tensor)
            elif part == "up":
                self.gate_up[expert, self.inter :].copy_(tensor)
            else:
                self.down[expert].copy_(tensor)
        return f"{expert}:{part}"

    def expected_parts(self) -> set[str]:
        return {f"{e}:{p}" for e in range(self.gate.shape[0]) for p in ("gate", "up", "down")}
