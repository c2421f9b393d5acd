"""Triton rotary embedding (in place) against kernels.rotary, on the model's own cos/sin tables."""

from __future__ import annotations

import pytest
import torch

from engine.config import RopeConfig
from engine.models.llama import RotaryEmbedding
from kernels.rotary import apply_rotary as torch_apply_rotary
from kernels.triton_rotary import apply_rotary

from .tolerances import DTYPES, assert_close

LLAMA3 = RopeConfig(
    theta=500000.0,
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=64,
)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "rope,head_dim",
    [(RopeConfig(), 64), (LLAMA3, 32), (RopeConfig(rope_type="linear", factor=2.0), 48)],
    ids=["default", "llama3", "linear-dim48"],
)
def test_rotary_in_place_matches_torch(
    device: torch.device, dtype: torch.dtype, rope: RopeConfig, head_dim: int
) -> None:
    heads, kv_heads, tokens = 6, 2, 9
    gen = torch.Generator().manual_seed(head_dim)
    table = RotaryEmbedding(rope, head_dim, max_positions=512).to(device)
    positions = torch.randint(0, 512, (tokens,), generator=gen).to(device)
    cos, sin = table.table(positions, dtype)
    # The model rotates the q+k part of its fused QKV output: a strided view.
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, generator=gen).to(device, dtype)
    qk = qkv[:, : (heads + kv_heads) * head_dim].view(tokens, heads + kv_heads, head_dim)
    v_before = qkv[:, (heads + kv_heads) * head_dim :].clone()
    expected = torch_apply_rotary(qk, cos, sin)
    out = apply_rotary(qk, cos, sin)
    assert out.data_ptr() == qk.data_ptr()
    assert_close(qk, expected)
    assert torch.equal(qkv[:, (heads + kv_heads) * head_dim :], v_before)
