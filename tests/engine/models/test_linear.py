"""The model's Linear: loads like nn.Linear, packs once, computes the same."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.models.linear import Linear
from kernels.linear import ONEDNN_LINEAR, TORCH_LINEAR, LinearMethod, onednn_linear_available


@pytest.mark.parametrize(
    "method",
    [
        TORCH_LINEAR,
        pytest.param(
            ONEDNN_LINEAR,
            marks=pytest.mark.skipif(not onednn_linear_available(), reason="no oneDNN"),
        ),
    ],
    ids=lambda m: m.name,
)
def test_pack_keeps_the_output_and_frees_the_plain_weight(method: LinearMethod) -> None:
    layer = Linear(16, 24, True, method)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(24, 16, generator=gen))
        layer.bias.copy_(torch.randn(24, generator=gen))
    plain_weight = layer.weight.detach().clone()
    x = torch.randn(5, 16, generator=gen)
    expected = F.linear(x, plain_weight, layer.bias)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), expected)
        layer.pack()
        layer.pack()  # idempotent
        torch.testing.assert_close(layer(x), expected, atol=1e-4, rtol=1e-4)
    names = {name for name, _ in layer.named_parameters()}
    if method is TORCH_LINEAR:
        assert names == {"weight", "bias"}
    else:
        # The packed weight replaced the parameter: one copy of the weight, not two.
        assert names == {"bias"} and layer.weight.is_mkldnn
    assert "packed=True" in repr(layer)
