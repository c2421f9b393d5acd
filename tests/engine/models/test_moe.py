"""The mixture-of-experts MLP against transformers' own blocks, in 16-bit as well.

Whole-model parity (tests/engine/test_parity.py) runs in fp32, where the order
in which the routing weight meets an expert's output does not show; in bf16 it
does, and each family rounds at its own place.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from engine.config import ModelConfig
from engine.models.moe import SparseMoE
from kernels.fused_ops import TORCH_OPS

COMMON = dict(
    vocab_size=64,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_experts_per_tok=2,
)


def _blocks(family: str) -> tuple[torch.nn.Module, ModelConfig]:
    if family == "mixtral":
        hf_config = transformers.MixtralConfig(**COMMON, num_local_experts=8)
        block = transformers.models.mixtral.modeling_mixtral.MixtralSparseMoeBlock(hf_config)
        architecture = "MixtralForCausalLM"
    elif family == "qwen2_moe":
        hf_config = transformers.Qwen2MoeConfig(
            **COMMON, num_experts=8, moe_intermediate_size=256, shared_expert_intermediate_size=192
        )
        block = transformers.models.qwen2_moe.modeling_qwen2_moe.Qwen2MoeSparseMoeBlock(hf_config)
        architecture = "Qwen2MoeForCausalLM"
    else:
        hf_config = transformers.Qwen3MoeConfig(
            **COMMON, num_experts=8, moe_intermediate_size=256, norm_topk_prob=True
        )
        block = transformers.models.qwen3_moe.modeling_qwen3_moe.Qwen3MoeSparseMoeBlock(hf_config)
        architecture = "Qwen3MoeForCausalLM"
    config = ModelConfig.from_dict({**hf_config.to_dict(), "architectures": [architecture]})
    return block, config


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "qwen3_moe"])
def test_experts_compute_what_transformers_computes(family: str, dtype: torch.dtype) -> None:
    """Bit for bit: Mixtral weighs outputs by fp32 probabilities and rounds once,
    Qwen2-MoE and Qwen3-MoE round the probabilities first; Qwen2-MoE adds its gated
    shared expert."""
    torch.manual_seed(0)
    block, config = _blocks(family)
    for param in block.parameters():
        torch.nn.init.normal_(param, std=0.05)
    moe = SparseMoE(config, TORCH_OPS)
    with torch.no_grad():
        moe.gate.copy_(block.gate.weight)
        moe.gate_up.copy_(block.experts.gate_up_proj)
        moe.down.copy_(block.experts.down_proj)
        if family == "qwen2_moe":
            shared = block.shared_expert
            assert moe.shared_expert is not None
            moe.shared_expert.gate_up_proj.weight.copy_(
                torch.cat([shared.gate_proj.weight, shared.up_proj.weight])
            )
            moe.shared_expert.down_proj.weight.copy_(shared.down_proj.weight)
            moe.shared_expert_gate.weight.copy_(block.shared_expert_gate.weight)
    block, moe = block.to(dtype).eval(), moe.to(dtype)
    x = torch.randn(300, 128).to(dtype)
    with torch.no_grad():
        expected = block(x[None])[0]
        got = moe(x)
    assert torch.equal(got, expected)
