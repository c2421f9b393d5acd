"""GLM's interleaved rotation as the half-split kernels run it: reordering query and key
rows turns one into the other, and leaves every attention score unchanged."""

from __future__ import annotations

import pytest
import torch

from engine.interleaved_rope import half_split_order, half_split_rows


def interleaved(x: torch.Tensor, positions: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """GLM's rotation (transformers' Glm4 apply_rotary_pos_emb): pairs (2i, 2i + 1)."""
    inv_freq = 1.0 / 10000 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim)
    angles = positions[:, None].float() * inv_freq  # [tokens, rotary_dim / 2]
    cos, sin = angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1)
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    swapped = torch.stack((-rot[..., 1::2], rot[..., 0::2]), dim=-1).flatten(-2)
    return torch.cat((rot * cos[:, None] + swapped * sin[:, None], rest), dim=-1)


def half_split(x: torch.Tensor, positions: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """The kernels' rotation: pairs (i, i + rotary_dim / 2)."""
    inv_freq = 1.0 / 10000 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim)
    angles = positions[:, None].float() * inv_freq
    cos, sin = torch.cat((angles.cos(),) * 2, -1), torch.cat((angles.sin(),) * 2, -1)
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    half = rotary_dim // 2
    swapped = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    return torch.cat((rot * cos[:, None] + swapped * sin[:, None], rest), dim=-1)


@pytest.mark.parametrize(("head_dim", "rotary_dim"), [(16, 8), (16, 16), (32, 8)])
def test_reordered_rows_rotate_as_the_interleaved_ones_do(head_dim: int, rotary_dim: int) -> None:
    torch.manual_seed(0)
    heads, hidden, tokens = 3, 24, 7
    weight = torch.randn(heads * head_dim, hidden)
    hidden_states = torch.randn(tokens, hidden)
    positions = torch.arange(tokens) * 5
    theirs = interleaved(
        (hidden_states @ weight.T).view(tokens, heads, head_dim), positions, rotary_dim
    )
    reordered = half_split_rows(weight, head_dim, rotary_dim)
    ours = half_split(
        (hidden_states @ reordered.T).view(tokens, heads, head_dim), positions, rotary_dim
    )
    # The same vectors, their dimensions listed in the new order...
    order = half_split_order(head_dim, rotary_dim)
    torch.testing.assert_close(ours, theirs[..., order])
    # ...so every query-key dot product (a score) is the same.
    torch.testing.assert_close(ours @ ours.transpose(-1, -2), theirs @ theirs.transpose(-1, -2))


def test_a_bias_is_reordered_like_its_rows_and_partial_heads_are_refused() -> None:
    bias = torch.arange(8.0)
    assert half_split_rows(bias, 4, 4).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    with pytest.raises(ValueError, match="whole heads"):
        half_split_rows(torch.zeros(6), 4, 4)
