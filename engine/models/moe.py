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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ModelConfig
from engine.models.linear import Linear
from engine.models.mlp import MLP, act_and_mul_for
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
        self.act_and_mul = act_and_mul_for(config, ops)
        self.experts = ops.experts
        # The router's matmul is plain F.linear, as transformers', so that near-tied
        # expert scores break the same way.
        self.gate = nn.Parameter(torch.empty(experts, hidden))
        self.gate_up = nn.Parameter(torch.empty(experts, 2 * self.inter, hidden))
        self.down = nn.Parameter(torch.empty(experts, hidden, self.inter))
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
        out = self.experts(x, self.gate_up, self.down, weights, chosen, self.act_and_mul)
        if self.shared_expert is not None:
            shared = torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
            out = out + shared
        return out

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
